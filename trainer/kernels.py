"""Device kernels behind plain functions: im2col/col2im here; max/ave pooling, LRN and sizes re-exported.

Each function takes ``xp`` arrays and dispatches on their module: the NumPy
twin is written with strided slices (a loop over the kernel window only,
never over pixels); the CuPy version is a RawKernel compiled on first use,
one thread per output element, with the same conventions (im2col layout,
window-local argmax index, Caffe's padding rules) so the two agree exactly.
``tests/test_kernels.py`` checks the agreement where CuPy and a GPU exist.

Layouts: images are N×C×H×W; im2col gives (C·kh·kw) × (N·oh·ow), rows
ordered (c, i, j) as Caffe's im2col so conv weights reshape to (M, C·kh·kw),
columns ordered (n, y, x) so the whole batch is one GEMM.

The kernels are split by job; every name is importable from here, as callers use it:
``kernels_geometry`` (output sizes, AVE divisors), ``kernels_pool``, ``kernels_lrn``,
and ``kernels_dispatch`` (thread split, compiled switch, CuPy loading). This module
keeps im2col/col2im, the convolution's pair.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer import kernels_cpu, kernels_dispatch
from trainer.backend import get_array_module
from trainer.kernels_dispatch import _compiled, _cuda, parallel, _run_compiled, blocks, compiled_available, use_compiled
from trainer.kernels_geometry import ave_pool_divisor, conv_out_size, pool_out_size
from trainer.kernels_lrn import lrn_across_backward, lrn_across_forward, lrn_across_forward_keep
from trainer.kernels_pool import (ave_pool_backward, ave_pool_forward, max_pool_backward, max_pool_forward,
                                  max_pool_values)

__all__ = ["conv_out_size", "pool_out_size", "ave_pool_divisor", "use_compiled", "compiled_available", "blocks",
           "im2col", "col2im", "max_pool_forward", "max_pool_values", "max_pool_backward", "ave_pool_forward",
           "ave_pool_backward", "lrn_across_forward", "lrn_across_forward_keep", "lrn_across_backward"]


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
    shape2 = (c * kh * kw, n * oh * ow)
    if _compiled(x):  # one pass, rows split over the kernel threads; the same bits as the slices below
        if out is not None and out.shape == shape2 and out.dtype == x.dtype and out.flags.c_contiguous:
            col2 = out
        else:
            col2 = np.empty(shape2, dtype=x.dtype)
        _run_compiled("im2col", c * kh * kw, col2.size, kernels_cpu.contiguous(x), col2, x.dtype.type(0),
                      kh, kw, ph, pw, sh, sw, dh, dw, oh, ow)
        return col2
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

    if c >= 4 * kernels_dispatch._WORKERS:
        parallel(c, col.size, fill)
    else:  # few channels (a first layer's 3): split by kernel row too, or one core gets 2 of 3 channels
        parallel(c * kh, col.size, fill_rows)
    return col.reshape(c * kh * kw, n * oh * ow)


def col2im(col: Any, shape: tuple[int, ...], kh: int, kw: int, ph: int, pw: int,
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

    parallel(c, col.size, add)
    return np.ascontiguousarray(xpad[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3))
