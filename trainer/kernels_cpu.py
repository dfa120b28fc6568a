"""Compiled CPU kernels (numba) for pooling, LRN, im2col, col2im and the update rules: one pass over memory each.

Why numba: the NumPy twins in ``trainer.kernels`` walk the kernel window with
strided slices, so a 3x3 max pooling makes 9 passes over the output with three
array operations each, and an LRN of size 5 a dozen passes over its input. These
loops make one pass, touch each output once and keep the window in cache. numba
installs from wheels on Linux, macOS and Windows for every Python the project
supports, and compiles with LLVM at least as well as a hand-written C extension
that the package would have to build on the user's machine; without it (or with
``DATAKIT_COMPILED=0``) the NumPy twins run, and the tests check that both agree
bit for bit.

Contracts (the same as the NumPy twins, so results are identical, bit for bit):
- arithmetic stays in the arrays' dtype (float32 sums stay float32) and sums run
  in the order the NumPy code adds its window slices;
- max pooling keeps the first maximum in row-major window order (strict ``>``),
  NaN never wins, the argmax is the window-local index ``i*kw + j``;
- scatter-adds (pooling backward, col2im) add each cell's contributions in the
  order of the window offsets ``(i, j)``, as the NumPy twins' slice additions do.

Every kernel takes C-contiguous arrays, writes into the output arrays it is given
and works on the planes (or samples) ``lo:hi`` of its outer loop only: the kernels
are serial and release the GIL, and ``trainer.kernels`` splits the range over its
thread pool by the same rule as the NumPy twins. numba's own parallel loops were
not used: on a busy machine each parallel region waited milliseconds for a
descheduled worker, longer than small layers take.

Writing a loop that vectorises: numba adds a select to every access whose signed index
it cannot prove non-negative (Python's negative indexing), and that select keeps LLVM
from vectorising the loop. Index inner loops from bases clamped with ``max(0, ...)`` or
held in unsigned integers (im2col and col2im do; benchmarks/RESULTS.md, session 5,
shows what that was worth: without it every compiled im2col lost to NumPy's slices).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

def _load() -> Any:
    """The compiled kernels, or None when numba is missing or turned off (``DATAKIT_COMPILED=0``)."""
    if os.environ.get("DATAKIT_COMPILED", "1").strip().lower() in ("0", "no", "false", "off"):
        return None
    try:
        import numba  # noqa: PLC0415 - optional accelerator, imported on first kernel call
    except Exception:  # ImportError, or a numba/llvmlite that does not match this NumPy
        return None
    try:
        kernels = _build(numba)
        # One tiny call proves the toolchain works here (a broken LLVM fails now, not mid-training).
        x = np.zeros((1, 1, 2, 2), dtype=np.float32)
        kernels.max_pool_fwd(x, np.empty((1, 1, 1, 1), dtype=np.float32), np.empty((1, 1, 1, 1), dtype=np.int32),
                             np.float32(-np.inf), 2, 2, 0, 0, 2, 2, 0, 1)
    except Exception:
        return None
    return kernels


def _build(numba: Any) -> Any:
    """Compile-on-first-call definitions; returned as a namespace of dispatchers."""
    from types import SimpleNamespace  # noqa: PLC0415

    njit = numba.njit
    opts = {"cache": True, "nogil": True}

    @njit(**opts)
    def ave_pool_fwd(x, y, div, zero, kh, kw, ph, pw, sh, sw, lo, hi):  # pragma: no cover - compiled
        n, c, h, w = x.shape
        oh, ow = y.shape[2], y.shape[3]
        for p in range(lo, hi):
            ni, ci = p // c, p % c
            for oy in range(oh):
                hs = oy * sh - ph
                y0, y1 = max(hs, 0), min(hs + kh, h)
                for ox in range(ow):
                    ws = ox * sw - pw
                    x0, x1 = max(ws, 0), min(ws + kw, w)
                    s = zero  # of x's dtype: a literal 0 would make the sum float64
                    for yy in range(y0, y1):
                        for xx in range(x0, x1):
                            s += x[ni, ci, yy, xx]
                    y[ni, ci, oy, ox] = s / div[oy, ox]

    @njit(**opts)
    def ave_pool_bwd(dy, dx, div, kh, kw, ph, pw, sh, sw, lo, hi):  # pragma: no cover - compiled
        n, c, h, w = dx.shape
        oh, ow = dy.shape[2], dy.shape[3]
        for p in range(lo, hi):
            ni, ci = p // c, p % c
            for yy in range(h):
                for xx in range(w):
                    dx[ni, ci, yy, xx] = 0
            for oy in range(oh - 1, -1, -1):
                hs = oy * sh - ph
                for ox in range(ow - 1, -1, -1):
                    ws = ox * sw - pw
                    g = dy[ni, ci, oy, ox] / div[oy, ox]
                    for yy in range(max(hs, 0), min(hs + kh, h)):
                        for xx in range(max(ws, 0), min(ws + kw, w)):
                            dx[ni, ci, yy, xx] += g

    @njit(**opts)
    def lrn_scale(x, scale, before, after, a, k, lo, hi):  # pragma: no cover - compiled
        # scale = k + a · Σ x² over channels c-before .. c+after, summed in that order; the
        # inner loops run along a plane so they vectorise.
        n, c, hw = x.shape
        for ni in range(lo, hi):  # samples
            for ci in range(c):
                c0, c1 = max(ci - before, 0), min(ci + after, c - 1)
                out = scale[ni, ci]
                src = x[ni, c0]
                for q in range(hw):
                    out[q] = src[q] * src[q]
                for cc in range(c0 + 1, c1 + 1):
                    src = x[ni, cc]
                    for q in range(hw):
                        out[q] += src[q] * src[q]
                for q in range(hw):
                    out[q] = out[q] * a + k

    @njit(**opts)
    def lrn_back(x, y, scale, dy, spow, ratio, dx, before, after, coeff, zero, lo, hi):  # pragma: no cover
        # dx = dy·scale^-β − coeff·x·Σ_window(dy·y/scale), the window mirrored (before/after swapped).
        n, c, hw = x.shape
        for ni in range(lo, hi):  # samples
            for ci in range(c):
                r, d, yy, sc = ratio[ni, ci], dy[ni, ci], y[ni, ci], scale[ni, ci]
                for q in range(hw):
                    r[q] = d[q] * yy[q] / sc[q]
            for ci in range(c):
                c0, c1 = max(ci - before, 0), min(ci + after, c - 1)
                out = dx[ni, ci]  # holds the window sum until the last loop
                src = ratio[ni, c0]
                for q in range(hw):
                    out[q] = src[q]
                for cc in range(c0 + 1, c1 + 1):
                    src = ratio[ni, cc]
                    for q in range(hw):
                        out[q] += src[q]
                if ci - before < 0 or ci + after > c - 1:
                    for q in range(hw):  # the NumPy twin also adds the zero padding: -0 becomes +0
                        out[q] += zero
                d, sp, xx = dy[ni, ci], spow[ni, ci], x[ni, ci]
                for q in range(hw):
                    out[q] = d[q] * sp[q] - coeff * xx[q] * out[q]

    @njit(**opts)
    def col2im(col, dx, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow, lo, hi):  # pragma: no cover - compiled
        # col is (C, kh, kw, N, oh, ow); dx (N, C, H, W) is zeroed and summed into, offsets (i, j) in order.
        n, c, h, w = dx.shape
        for p in range(lo, hi):
            ci, ni = p // n, p % n
            plane = dx[ni, ci]
            for yy in range(h):
                for xx in range(w):
                    plane[yy, xx] = 0
            for i in range(kh):
                for j in range(kw):
                    x0 = j * dw - pw
                    # outputs ox whose column x0 + ox*sw lies in [0, w)
                    ox0 = max(0, (-x0 + sw - 1) // sw)
                    ox1 = min(ow, (w - x0 + sw - 1) // sw)
                    # The inner loops index from bases the compiler can see are >= 0 (max with 0):
                    # an index that might be negative gets numba's wrap-around select on every
                    # element, which kept LLVM from vectorising (LeNet conv2's col2im: 2.4 -> ~1.2 ms).
                    count = max(0, ox1 - ox0)
                    d0 = max(0, x0 + ox0 * sw)
                    src = col[ci, i, j, ni]
                    for oy in range(oh):
                        yy = oy * sh - ph + i * dh
                        if yy < 0 or yy >= h:
                            continue
                        row, srow = plane[yy], src[oy]
                        if sw == 1:  # unit stride: a loop the compiler vectorises
                            for t in range(count):
                                row[d0 + t] += srow[ox0 + t]
                        else:
                            for t in range(count):
                                row[d0 + t * sw] += srow[ox0 + t]

    @njit(**opts)
    def im2col(x, col, zero, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow, lo, hi):  # pragma: no cover - compiled
        # x is (N, C, H, W); col (C·kh·kw, N·oh·ow), rows r = (c, i, j): rows lo..hi-1 are written,
        # zeros where the window reaches into the padding. Flat arrays and unsigned offsets in the
        # copy loops: numba adds a wrap-around select to every signed index it cannot prove >= 0,
        # and that select kept the copies from vectorising (the NumPy slice copies won before).
        n, c, h, w = x.shape
        xf = x.reshape(x.size)
        colf = col.reshape(col.size)
        plane = h * w
        rowlen = n * oh * ow  # (``zero`` is +0 of x's dtype: the padding the NumPy twin writes)
        for r in range(lo, hi):
            ci = r // (kh * kw)
            i = (r // kw) % kh
            j = r % kw
            x0 = j * dw - pw
            # outputs ox whose column x0 + ox*sw lies in [0, w)
            ox0 = min(ow, max(0, (-x0 + sw - 1) // sw))
            ox1 = max(ox0, min(ow, (w - x0 + sw - 1) // sw))
            count = np.uint64(ox1 - ox0)
            head = np.uint64(ox0)
            tail = np.uint64(ow - ox1)
            full = np.uint64(ow)
            step = np.uint64(sw)
            sx = max(0, x0 + ox0 * sw)
            for ni in range(n):
                sbase = (ni * c + ci) * plane
                for oy in range(oh):
                    d = np.uint64(r * rowlen + (ni * oh + oy) * ow)
                    yy = oy * sh - ph + i * dh
                    if yy < 0 or yy >= h:
                        for t in range(full):
                            colf[d + t] = zero
                        continue
                    src = np.uint64(sbase + yy * w + sx)
                    for t in range(head):
                        colf[d + t] = zero
                    dst = d + head
                    if sw == 1:
                        for t in range(count):
                            colf[dst + t] = xf[src + t]
                    else:
                        for t in range(count):
                            colf[dst + t] = xf[src + t * step]
                    end = dst + count
                    for t in range(tail):
                        colf[end + t] = zero

    from trainer import kernels_cpu_maxpool as maxpool  # noqa: PLC0415 - imports numba
    from trainer import kernels_cpu_update as update  # noqa: PLC0415 - imports numba

    return SimpleNamespace(max_pool_fwd=maxpool.max_pool_fwd, max_pool_bwd=maxpool.max_pool_bwd,
                           ave_pool_fwd=ave_pool_fwd, ave_pool_bwd=ave_pool_bwd, lrn_scale=lrn_scale,
                           lrn_back=lrn_back, col2im=col2im, im2col=im2col,
                           **{name: getattr(update, name) for name in UPDATE_STEPS})


#: the compiled update steps (``trainer.kernels_cpu_update``), one per rule of ``trainer.updates``
UPDATE_STEPS = ("sgd_step", "nesterov_step", "adagrad_step", "rmsprop_step", "adadelta_step", "adam_step")


_IMPL: Any = None
_LOADED = False


def impl() -> Any:
    """The compiled kernels (loaded once), or None when the NumPy twins must run."""
    global _IMPL, _LOADED
    if not _LOADED:
        _LOADED = True
        _IMPL = _load()
    return _IMPL


def kernel(name: str) -> Any:
    """Compiled kernel ``name``; call it as ``fn(*arrays_and_scalars, lo, hi)``."""
    return getattr(_IMPL, name)


def contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` itself when C-contiguous, else a C-contiguous copy (one compiled layout per kernel)."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)
