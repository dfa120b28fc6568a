"""Device kernels behind plain functions: im2col/col2im, max/ave pooling, LRN.

Each function takes ``xp`` arrays and dispatches on their module: the NumPy
twin is written with strided slices (a loop over the kernel window only,
never over pixels); the CuPy version is a RawKernel compiled on first use,
one thread per output element, with the same conventions (im2col layout,
window-local argmax index, Caffe's padding rules) so the two agree exactly.
``tests/test_kernels.py`` checks the agreement where CuPy and a GPU exist.

Layouts: images are N×C×H×W; im2col gives (C·kh·kw) × (N·oh·ow), rows
ordered (c, i, j) as Caffe's im2col so conv weights reshape to (M, C·kh·kw),
columns ordered (n, y, x) so the whole batch is one GEMM.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from collections.abc import Callable

import numpy as np

from trainer import kernels_cpu
from trainer.backend import get_array_module

# ----------------------------------------------------------------- shapes ----


def conv_out_size(size: int, kernel: int, pad: int, stride: int, dilation: int = 1) -> int:
    """Caffe: floor((in + 2*pad - (dilation*(kernel-1)+1)) / stride) + 1."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def pool_out_size(size: int, kernel: int, pad: int, stride: int, ceil_mode: bool = True) -> int:
    """Caffe's pooled size: ceil (or floor) mode, then drop a last window starting in the right pad."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def ave_pool_divisor(size: int, out: int, kernel: int, pad: int, stride: int) -> np.ndarray:
    """Per-output-position window size along one axis for AVE pooling (Caffe's rule).

    hend = min(hstart + kernel, size + pad) with hstart = o*stride - pad,
    counted before clipping to the image: padding inside ``size + pad`` counts.
    """
    start = np.arange(out) * stride - pad
    end = np.minimum(start + kernel, size + pad)
    return (end - start).astype(np.float64)


# ------------------------------------------------------------ threading ----
# NumPy runs one thread per call outside BLAS; the slice copies below release
# the GIL, so splitting them over the cores lets im2col and pooling use the
# whole CPU as the GEMMs do.
_WORKERS = max(1, min(os.cpu_count() or 1, 8))
_POOL: ThreadPoolExecutor | None = None
_MIN_SPLIT = 1 << 18  # elements below which threads cost more than they save


def _parallel(total: int, work: int, fn: Callable[[int, int], None]) -> None:
    """Run ``fn(lo, hi)`` over [0, total) in contiguous chunks, one per core when ``work`` is large."""
    global _POOL
    parts = min(_WORKERS, total) if work >= _MIN_SPLIT else 1
    if parts <= 1:
        fn(0, total)
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_WORKERS, thread_name_prefix="kernels")
    bounds = [total * k // parts for k in range(parts + 1)]
    # The caller works too: it runs the first chunk, then takes back every chunk no worker has
    # started (cancel() succeeds only then). On a busy machine a worker may not be scheduled for
    # milliseconds; waiting for it to start cost more than the whole kernel.
    chunks = [(bounds[k], bounds[k + 1]) for k in range(parts)]  # none empty: parts <= total
    futures = [_POOL.submit(fn, lo, hi) for lo, hi in chunks[1:]]
    fn(*chunks[0])
    for f, (lo, hi) in zip(futures, chunks[1:]):
        if f.cancel():
            fn(lo, hi)
    for f in futures:
        if not f.cancelled():
            f.result()


# ------------------------------------------------------- compiled CPU side ----
# trainer.kernels_cpu holds numba versions of the loops below that make one pass
# over memory; they give the same bits as the NumPy twins (tests/test_kernels.py
# runs both). ``use_compiled(False)`` (or DATAKIT_COMPILED=0) keeps the NumPy twins.
_COMPILED_ON = True
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def use_compiled(on: bool) -> bool:
    """Turn the compiled CPU kernels on or off; returns the previous setting."""
    global _COMPILED_ON
    prev, _COMPILED_ON = _COMPILED_ON, bool(on)
    return prev


def _compiled(*arrays: Any) -> bool:
    """Whether the compiled kernels take these (host, float32/float64) arrays."""
    if not _COMPILED_ON or any(a.dtype not in _FLOATS or a.dtype != arrays[0].dtype for a in arrays):
        return False
    return kernels_cpu.impl() is not None


def _run_compiled(name: str, total: int, work: int, *args: Any) -> None:
    """Compiled kernel ``name`` over its outer range [0, total), split over the cores as ``_parallel`` does."""
    fn = kernels_cpu.kernel(name)
    _parallel(total, work, lambda lo, hi: fn(*args, lo, hi))


def compiled_available() -> bool:
    """True when the compiled CPU kernels are in use (numba importable and not turned off)."""
    return _COMPILED_ON and kernels_cpu.impl() is not None


# ----------------------------------------------------------------- im2col ----


def im2col(x: Any, kh: int, kw: int, ph: int, pw: int, sh: int, sw: int,
           dh: int = 1, dw: int = 1, out: Any = None) -> Any:
    """N×C×H×W → (C·kh·kw)×(N·oh·ow) columns (zero padding).

    The batch sits in the columns so a convolution is one large GEMM per
    group (W · col), which is what keeps BLAS (or cuBLAS) busy. ``out``
    (NumPy): a buffer of the result's shape to fill instead of a new array, so
    a layer reuses one buffer per iteration (no page faults on big batches).
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    oh = conv_out_size(h, kh, ph, sh, dh)
    ow = conv_out_size(w, kw, pw, sw, dw)
    if xp is not np:
        return _cuda().im2col(x, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow)
    if ph or pw:
        xpad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        xpad[:, :, ph:ph + h, pw:pw + w] = x
    else:
        xpad = x
    # Walk the padded input channel-major so each copy below reads long rows.
    xt = xpad.transpose(1, 0, 2, 3)
    shape6 = (c, kh, kw, n, oh, ow)
    if out is not None and out.shape == (c * kh * kw, n * oh * ow) and out.dtype == x.dtype:
        col = out.reshape(shape6)
    else:
        col = np.empty(shape6, dtype=x.dtype)

    def fill(lo: int, hi: int) -> None:
        for i in range(kh):
            y0 = i * dh
            for j in range(kw):
                x0 = j * dw
                col[lo:hi, i, j] = xt[lo:hi, :, y0:y0 + sh * (oh - 1) + 1:sh, x0:x0 + sw * (ow - 1) + 1:sw]

    def fill_rows(lo: int, hi: int) -> None:  # (channel, kernel row) pairs lo..hi-1
        for r in range(lo, hi):
            ci, i = divmod(r, kh)
            y0 = i * dh
            for j in range(kw):
                x0 = j * dw
                col[ci, i, j] = xt[ci, :, y0:y0 + sh * (oh - 1) + 1:sh, x0:x0 + sw * (ow - 1) + 1:sw]

    if c >= 4 * _WORKERS:
        _parallel(c, col.size, fill)
    else:  # few channels (a first layer's 3): split by kernel row too, or one core gets 2 of 3 channels
        _parallel(c * kh, col.size, fill_rows)
    return col.reshape(c * kh * kw, n * oh * ow)


def col2im(col: Any, shape: tuple[int, int, int, int], kh: int, kw: int, ph: int, pw: int,
           sh: int, sw: int, dh: int = 1, dw: int = 1) -> Any:
    """The adjoint of im2col: sum (C·kh·kw)×(N·oh·ow) columns back into an N×C×H×W image."""
    xp = get_array_module(col)
    n, c, h, w = shape
    oh = conv_out_size(h, kh, ph, sh, dh)
    ow = conv_out_size(w, kw, pw, sw, dw)
    if xp is not np:
        return _cuda().col2im(col, shape, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow)
    col6 = col.reshape(c, kh, kw, n, oh, ow)
    if _compiled(col):
        dx = np.empty((n, c, h, w), dtype=col.dtype)
        _run_compiled("col2im", c * n, col.size, kernels_cpu.contiguous(col6), dx, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow)
        return dx
    xpad = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=col.dtype)

    def add(lo: int, hi: int) -> None:
        for i in range(kh):
            y0 = i * dh
            for j in range(kw):
                x0 = j * dw
                xpad[lo:hi, :, y0:y0 + sh * (oh - 1) + 1:sh, x0:x0 + sw * (ow - 1) + 1:sw] += col6[lo:hi, i, j]

    _parallel(c, col.size, add)
    return np.ascontiguousarray(xpad[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3))


# ---------------------------------------------------------------- pooling ----


def _pad_for_pool(x: np.ndarray, kh: int, kw: int, ph: int, pw: int, sh: int, sw: int,
                  oh: int, ow: int, fill: float) -> np.ndarray:
    """Pad so that every (ceil-mode) window lies inside; extra cells hold ``fill``."""
    n, c, h, w = x.shape
    hp = max(h + 2 * ph, (oh - 1) * sh + kh)
    wp = max(w + 2 * pw, (ow - 1) * sw + kw)
    if hp == h and wp == w:
        return x
    out = np.full((n, c, hp, wp), fill, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def max_pool_forward(x: Any, kh: int, kw: int, ph: int, pw: int, sh: int, sw: int,
                     oh: int, ow: int) -> tuple[Any, Any]:
    """Max pooling; returns (y, argmax) with argmax the window-local index i*kw+j.

    Padded cells never win (Caffe clips the window to the image); ties keep
    the first maximum in row-major window order, as Caffe's strict ``>``.
    """
    xp = get_array_module(x)
    if xp is not np:
        return _cuda().max_pool_forward(x, kh, kw, ph, pw, sh, sw, oh, ow)
    n, c = x.shape[:2]
    if _compiled(x):
        y = np.empty((n, c, oh, ow), dtype=x.dtype)
        arg = np.empty((n, c, oh, ow), dtype=np.int32)
        _run_compiled("max_pool_fwd", n * c, y.size * kh * kw, kernels_cpu.contiguous(x), y, arg, x.dtype.type(-np.inf),
                      kh, kw, ph, pw, sh, sw)
        return y, arg
    xpad = _pad_for_pool(x, kh, kw, ph, pw, sh, sw, oh, ow, -np.inf)
    y = np.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
    arg = np.zeros((n, c, oh, ow), dtype=np.int32)
    better = np.empty((n, c, oh, ow), dtype=bool)

    def run(lo: int, hi: int) -> None:
        yv, av, bv = y[lo:hi], arg[lo:hi], better[lo:hi]
        for i in range(kh):
            for j in range(kw):
                cand = xpad[lo:hi, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                np.greater(cand, yv, out=bv)
                np.copyto(yv, cand, where=bv)
                np.copyto(av, i * kw + j, where=bv)

    _parallel(n, y.size * kh * kw, run)
    return y, arg


def max_pool_values(x: Any, kh: int, kw: int, ph: int, pw: int, sh: int, sw: int, oh: int, ow: int) -> Any:
    """Max pooling without the argmax (TEST phase): the same values as max_pool_forward, a third of the work.

    ``fmax`` skips NaN as Caffe's strict ``>`` does, so even NaN inputs give what max_pool_forward gives.
    """
    xp = get_array_module(x)
    if xp is not np:
        return _cuda().max_pool_forward(x, kh, kw, ph, pw, sh, sw, oh, ow)[0]
    n, c = x.shape[:2]
    if _compiled(x):
        y = np.empty((n, c, oh, ow), dtype=x.dtype)
        scratch = np.empty((n, c, oh, ow), dtype=np.int32)  # the compiled loop's argmax, dropped
        _run_compiled("max_pool_fwd", n * c, y.size * kh * kw, kernels_cpu.contiguous(x), y, scratch,
                      x.dtype.type(-np.inf), kh, kw, ph, pw, sh, sw)
        return y
    xpad = _pad_for_pool(x, kh, kw, ph, pw, sh, sw, oh, ow, -np.inf)
    y = np.full((n, c, oh, ow), -np.inf, dtype=x.dtype)

    def run(lo: int, hi: int) -> None:
        yv = y[lo:hi]
        for i in range(kh):
            for j in range(kw):
                np.fmax(yv, xpad[lo:hi, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw], out=yv)

    _parallel(n, y.size * kh * kw, run)
    return y


def max_pool_backward(dy: Any, arg: Any, shape: tuple[int, int, int, int], kh: int, kw: int,
                      ph: int, pw: int, sh: int, sw: int) -> Any:
    """Route each output gradient to the input cell that won its window."""
    xp = get_array_module(dy)
    if xp is not np:
        return _cuda().max_pool_backward(dy, arg, shape, kh, kw, ph, pw, sh, sw)
    n, c, h, w = shape
    oh, ow = dy.shape[2:]
    if _compiled(dy) and arg.dtype == np.int32:
        dx = np.empty((n, c, h, w), dtype=dy.dtype)
        _run_compiled("max_pool_bwd", n * c, dx.size + dy.size, kernels_cpu.contiguous(dy), kernels_cpu.contiguous(arg), dx,
                        kh, kw, ph, pw, sh, sw)
        return dx
    hp = max(h + 2 * ph, (oh - 1) * sh + kh)
    wp = max(w + 2 * pw, (ow - 1) * sw + kw)
    dx = np.zeros((n, c, hp, wp), dtype=dy.dtype)

    def run(lo: int, hi: int) -> None:
        a, d = arg[lo:hi], dy[lo:hi]
        for i in range(kh):
            for j in range(kw):
                dx[lo:hi, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += \
                    np.where(a == i * kw + j, d, 0)

    _parallel(n, dy.size * kh * kw, run)
    return np.ascontiguousarray(dx[:, :, ph:ph + h, pw:pw + w])


def _ave_divisor(h: int, w: int, kh: int, kw: int, ph: int, pw: int, sh: int, sw: int,
                 oh: int, ow: int, dtype: Any) -> np.ndarray:
    dv = ave_pool_divisor(h, oh, kh, ph, sh)[:, None] * ave_pool_divisor(w, ow, kw, pw, sw)[None, :]
    return dv.astype(dtype)


def ave_pool_forward(x: Any, kh: int, kw: int, ph: int, pw: int, sh: int, sw: int,
                     oh: int, ow: int) -> Any:
    """Average pooling with Caffe's divisor (see ``ave_pool_divisor``)."""
    xp = get_array_module(x)
    if xp is not np:
        return _cuda().ave_pool_forward(x, kh, kw, ph, pw, sh, sw, oh, ow)
    n, c, h, w = x.shape
    if _compiled(x):
        y = np.empty((n, c, oh, ow), dtype=x.dtype)
        div = _ave_divisor(h, w, kh, kw, ph, pw, sh, sw, oh, ow, x.dtype)
        _run_compiled("ave_pool_fwd", n * c, y.size * kh * kw, kernels_cpu.contiguous(x), y, div, x.dtype.type(0),
                      kh, kw, ph, pw, sh, sw)
        return y
    xpad = _pad_for_pool(x, kh, kw, ph, pw, sh, sw, oh, ow, 0.0)
    y = np.zeros((n, c, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            y += xpad[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
    y /= _ave_divisor(h, w, kh, kw, ph, pw, sh, sw, oh, ow, x.dtype)
    return y


def ave_pool_backward(dy: Any, shape: tuple[int, int, int, int], kh: int, kw: int,
                      ph: int, pw: int, sh: int, sw: int) -> Any:
    xp = get_array_module(dy)
    if xp is not np:
        return _cuda().ave_pool_backward(dy, shape, kh, kw, ph, pw, sh, sw)
    n, c, h, w = shape
    oh, ow = dy.shape[2:]
    if _compiled(dy):
        dx = np.empty((n, c, h, w), dtype=dy.dtype)
        div = _ave_divisor(h, w, kh, kw, ph, pw, sh, sw, oh, ow, dy.dtype)
        _run_compiled("ave_pool_bwd", n * c, dy.size * kh * kw, kernels_cpu.contiguous(dy), dx, div, kh, kw, ph, pw, sh, sw)
        return dx
    g = dy / _ave_divisor(h, w, kh, kw, ph, pw, sh, sw, oh, ow, dy.dtype)
    hp = max(h + 2 * ph, (oh - 1) * sh + kh)
    wp = max(w + 2 * pw, (ow - 1) * sw + kw)
    dx = np.zeros((n, c, hp, wp), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += g
    return np.ascontiguousarray(dx[:, :, ph:ph + h, pw:pw + w])


# -------------------------------------------------------------------- LRN ----


def _channel_window_sum(a: np.ndarray, before: int, after: int) -> np.ndarray:
    """s[:, c] = sum of a[:, c-before .. c+after] (zero beyond the edges)."""
    n, c, h, w = a.shape
    padded = np.zeros((n, c + before + after, h, w), dtype=a.dtype)
    padded[:, before:before + c] = a
    out = padded[:, 0:c].copy()
    for k in range(1, before + after + 1):
        out += padded[:, k:k + c]
    return out


def lrn_across_forward(x: Any, size: int, alpha: float, beta: float, k: float) -> tuple[Any, Any]:
    """ACROSS_CHANNELS LRN: returns (y, scale), scale = k + alpha/size · Σ x² over the window."""
    xp = get_array_module(x)
    if xp is not np:
        return _cuda().lrn_across_forward(x, size, alpha, beta, k)
    pre = (size - 1) // 2
    if _compiled(x) and x.ndim == 4:
        n, c = x.shape[:2]
        x3 = kernels_cpu.contiguous(x).reshape(n, c, -1)
        scale = np.empty(x.shape, dtype=x.dtype)
        t = x.dtype.type
        _run_compiled("lrn_scale", n, x.size * size, x3, scale.reshape(n, c, -1), pre, size - pre - 1, t(alpha / size), t(k))
        return x * np.power(scale, -beta), scale
    scale = _channel_window_sum(x * x, pre, size - pre - 1)
    scale *= alpha / size
    scale += k
    y = x * np.power(scale, -beta)
    return y, scale


def lrn_across_backward(x: Any, y: Any, scale: Any, dy: Any, size: int, alpha: float,
                        beta: float) -> Any:
    """dx = dy·scale^-β − (2αβ/size)·x·Σ_window(dy·y/scale) (the window mirrored)."""
    xp = get_array_module(x)
    if xp is not np:
        return _cuda().lrn_across_backward(x, y, scale, dy, size, alpha, beta)
    pre = (size - 1) // 2
    if _compiled(x, y, scale, dy) and x.ndim == 4:
        n, c = x.shape[:2]
        c3 = kernels_cpu.contiguous
        spow = np.power(scale, -beta)
        dx = np.empty(x.shape, dtype=x.dtype)
        t = x.dtype.type
        ratio = np.empty(x.shape, dtype=x.dtype)
        _run_compiled("lrn_back", n, x.size * size, *(c3(a).reshape(n, c, -1) for a in (x, y, scale, dy, spow, ratio, dx)),
                        size - pre - 1, pre, t(2.0 * alpha * beta / size), t(0))
        return dx
    ratio = dy * y / scale
    acc = _channel_window_sum(ratio, size - pre - 1, pre)
    return dy * np.power(scale, -beta) - (2.0 * alpha * beta / size) * x * acc


# --------------------------------------------------------------- CuPy side ----

_CUDA_IMPL: Any = None


def _cuda() -> Any:
    global _CUDA_IMPL
    if _CUDA_IMPL is None:
        from trainer import kernels_cuda  # noqa: PLC0415 - compiled only when a GPU is used
        _CUDA_IMPL = kernels_cuda
    return _CUDA_IMPL


def blocks(n: int, threads: int = 256) -> int:
    return max(1, math.ceil(n / threads))
