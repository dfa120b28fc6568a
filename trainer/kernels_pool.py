"""Max and average pooling on N×C×H×W arrays, with Caffe's window and padding rules.

Max pooling returns the window-local argmax (i*kw+j) that its backward routes
gradients by; padded cells never win and ties keep the first maximum (Caffe's
strict ``>``). Average pooling divides by Caffe's window size, padding inside
``size + pad`` counted (``kernels_geometry.ave_pool_divisor``). Each function
dispatches as ``kernels_dispatch`` says: CuPy, the compiled loops, or the NumPy
twin (strided slices, a loop over the kernel window only).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer import kernels_cpu
from trainer.backend import get_array_module
from trainer.kernels_dispatch import _compiled, _cuda, parallel, _run_compiled
from trainer.kernels_geometry import ave_pool_divisor


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

    parallel(n, y.size * kh * kw, run)
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

    parallel(n, y.size * kh * kw, run)
    return y


def max_pool_backward(dy: Any, arg: Any, shape: tuple[int, ...], kh: int, kw: int,
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

    parallel(n, dy.size * kh * kw, run)
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


def ave_pool_backward(dy: Any, shape: tuple[int, ...], kh: int, kw: int,
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
