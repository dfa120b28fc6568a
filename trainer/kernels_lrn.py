"""Local response normalisation across channels (Caffe's ACROSS_CHANNELS LRN), forward and backward.

scale = k + alpha/size · Σ x² over a window of ``size`` channels centred on each
channel, y = x · scale^-β. WITHIN_CHANNEL LRN is built from average pooling by the
layer (``layers/norm.py``). Dispatch as ``kernels_dispatch`` says.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer import kernels_cpu
from trainer.backend import get_array_module
from trainer.kernels_dispatch import _compiled, _cuda, _run_compiled


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
    y, scale, _ = lrn_across_forward_keep(x, size, alpha, beta, k)
    return y, scale


def lrn_across_forward_keep(x: Any, size: int, alpha: float, beta: float, k: float) -> tuple[Any, Any, Any]:
    """(y, scale, scale^-β): the power too (None on the GPU), for ``lrn_across_backward(..., spow=)``.

    The power is most of an LRN's time on the CPU (float32 ``np.power``: ~8 ms for CaffeNet's norm1
    at batch 16); keeping it spares the backward pass from computing the same values again.
    """
    xp = get_array_module(x)
    if xp is not np:
        y, scale = _cuda().lrn_across_forward(x, size, alpha, beta, k)
        return y, scale, None
    pre = (size - 1) // 2
    if _compiled(x) and x.ndim == 4:
        n, c = x.shape[:2]
        x3 = kernels_cpu.contiguous(x).reshape(n, c, -1)
        scale = np.empty(x.shape, dtype=x.dtype)
        t = x.dtype.type
        _run_compiled("lrn_scale", n, x.size * size, x3, scale.reshape(n, c, -1), pre, size - pre - 1, t(alpha / size), t(k))
        spow = np.power(scale, -beta)
        return x * spow, scale, spow
    scale = _channel_window_sum(x * x, pre, size - pre - 1)
    scale *= alpha / size
    scale += k
    spow = np.power(scale, -beta)
    return x * spow, scale, spow


def lrn_across_backward(x: Any, y: Any, scale: Any, dy: Any, size: int, alpha: float,
                        beta: float, spow: Any = None) -> Any:
    """dx = dy·scale^-β − (2αβ/size)·x·Σ_window(dy·y/scale) (the window mirrored).

    ``spow``: scale^-β as ``lrn_across_forward_keep`` returned it (the same values), else computed here.
    """
    xp = get_array_module(x)
    if xp is not np:
        return _cuda().lrn_across_backward(x, y, scale, dy, size, alpha, beta)
    pre = (size - 1) // 2
    if _compiled(x, y, scale, dy) and x.ndim == 4:
        n, c = x.shape[:2]
        c3 = kernels_cpu.contiguous
        if spow is None:
            spow = np.power(scale, -beta)
        dx = np.empty(x.shape, dtype=x.dtype)
        t = x.dtype.type
        ratio = np.empty(x.shape, dtype=x.dtype)
        _run_compiled("lrn_back", n, x.size * size, *(c3(a).reshape(n, c, -1) for a in (x, y, scale, dy, spow, ratio, dx)),
                        size - pre - 1, pre, t(2.0 * alpha * beta / size), t(0))
        return dx
    ratio = dy * y / scale
    acc = _channel_window_sum(ratio, size - pre - 1, pre)
    if spow is None:
        spow = np.power(scale, -beta)
    return dy * spow - (2.0 * alpha * beta / size) * x * acc
