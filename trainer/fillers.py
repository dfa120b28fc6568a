"""Weight fillers with Caffe's definitions (constant, uniform, gaussian, xavier, msra, ...).

Values are drawn on the host from a seeded NumPy Generator and then moved to
the device, so a given seed gives the same initial net on CPU and GPU.
"""

from __future__ import annotations

import math

import numpy as np

from datakit.errors import FormatError
from datakit.formats import caffe_pb2


def _fan(shape: tuple[int, ...], norm: int) -> float:
    """Caffe's n for xavier/msra: fan_in = count/shape[0], fan_out = count/shape[1]."""
    count = int(np.prod(shape))
    fan_in = count / shape[0] if shape else 1.0
    fan_out = count / shape[1] if len(shape) > 1 else float(count)
    if norm == caffe_pb2.FillerParameter.FAN_OUT:
        return fan_out
    if norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def fill(shape: tuple[int, ...], filler: caffe_pb2.FillerParameter, rng: np.random.Generator,
         where: str = "") -> np.ndarray:
    """A float64 host array of ``shape`` filled as Caffe's filler ``filler.type`` would."""
    kind = filler.type
    shape = tuple(int(s) for s in shape)
    if kind == "constant":
        out = np.full(shape, filler.value, dtype=np.float64)
    elif kind == "uniform":
        out = rng.uniform(filler.min, filler.max, size=shape)
    elif kind == "gaussian":
        out = rng.normal(filler.mean, filler.std, size=shape)
        if filler.sparse >= 0:
            # Caffe: keep each weight with probability sparse / num_outputs (per input).
            num_outputs = shape[0] if shape else 1
            keep = rng.random(shape) < filler.sparse / max(num_outputs, 1)
            out = out * keep
    elif kind == "positive_unitball":
        out = rng.uniform(0.0, 1.0, size=shape)
        if shape:
            flat = out.reshape(shape[0], -1)
            flat /= flat.sum(axis=1, keepdims=True)
    elif kind == "xavier":
        bound = math.sqrt(3.0 / _fan(shape, filler.variance_norm))
        out = rng.uniform(-bound, bound, size=shape)
    elif kind == "msra":
        std = math.sqrt(2.0 / _fan(shape, filler.variance_norm))
        out = rng.normal(0.0, std, size=shape)
    elif kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise FormatError(f"{where}: bilinear filler needs a square 4-D blob, got {shape}")
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        ys, xs = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        kernel = (1 - np.abs(xs / f - c)) * (1 - np.abs(ys / f - c))
        out = np.broadcast_to(kernel, shape).astype(np.float64)
    else:
        raise FormatError(f"{where}: unknown filler type {kind!r} "
                          "(constant, uniform, gaussian, positive_unitball, xavier, msra, bilinear)")
    return np.asarray(out, dtype=np.float64)
