"""Output sizes and divisors of the windowed kernels, by Caffe's rules (pure integer arithmetic).

Layers use them at reshape to size their tops; the kernels use them to size their loops.
They never touch an array, so they run the same for NumPy and CuPy.
"""

from __future__ import annotations

import numpy as np


def conv_out_size(size: int, kernel: int, pad: int, stride: int, dilation: int = 1) -> int:
    """Caffe: floor((in + 2*pad - (dilation*(kernel-1)+1)) / stride) + 1."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def pool_out_size(size: int, kernel: int, pad: int, stride: int, ceil_mode: bool = True, *,
                  padded: bool | None = None) -> int:
    """Caffe's pooled size: ceil (or floor) mode, then drop a last window starting in the right pad.

    The drop applies when the layer has any padding (``padded``; Caffe tests ``pad_h || pad_w``, so
    an axis without pad loses a last window that would start past its end when the other axis is
    padded). ``padded`` defaults to this axis's ``pad > 0``.
    """
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if (pad > 0 if padded is None else padded) and (out - 1) * stride >= size + pad:
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
