"""Weight fillers with Caffe's definitions (constant, uniform, gaussian, xavier, msra, ...).

``fill`` makes initial values: drawn on the host from a seeded NumPy Generator
and then moved to the device, so a given seed gives the same initial net on CPU
and GPU (and the same weights as ever: the training-parity tests rest on them).

``refill`` redraws values that change every forward (DummyData's tops): in place,
in the array's own dtype and on its own device, from ``trainer.counter_rng``
seeded by one draw of the same Generator. It is a different stream from
``fill``'s (same distributions, other values), chosen because ``fill``'s float64
draw cost several times ``torch.randn`` on every forward.
"""

from __future__ import annotations

import math

import numpy as np

from typing import Any

from datakit.errors import FormatError
from datakit.formats import caffe_pb2
from trainer import counter_rng


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


def refill(out: Any, filler: caffe_pb2.FillerParameter, rng: np.random.Generator, where: str = "") -> None:
    """Redraw ``out`` (a C-contiguous float NumPy or CuPy array holding an earlier fill) in place.

    uniform, gaussian (sparse too), positive_unitball, xavier and msra draw through
    ``trainer.counter_rng`` (one or two seeds from ``rng``, whatever the size), with
    the distributions ``fill`` gives: same bounds, mean and standard deviation, the
    same fan rules. constant and bilinear draw nothing and keep ``out`` as it is
    (their values never change). Same ``rng`` state, same values, on any thread count.
    """
    kind = filler.type
    shape = tuple(int(s) for s in out.shape)
    if kind in ("constant", "bilinear"):
        return
    if kind == "uniform":
        counter_rng.uniform(out, counter_rng.draw_seed(rng), filler.min, filler.max)
    elif kind == "gaussian":
        counter_rng.normal(out, counter_rng.draw_seed(rng), filler.mean, filler.std)
        if filler.sparse >= 0:
            keep = out.copy()
            counter_rng.uniform(keep, counter_rng.draw_seed(rng))
            num_outputs = shape[0] if shape else 1
            out *= (keep < filler.sparse / max(num_outputs, 1)).astype(out.dtype)
    elif kind == "positive_unitball":
        counter_rng.uniform(out, counter_rng.draw_seed(rng))
        if shape:
            flat = out.reshape(shape[0], -1)
            flat /= flat.sum(axis=1, keepdims=True)
    elif kind == "xavier":
        bound = math.sqrt(3.0 / _fan(shape, filler.variance_norm))
        counter_rng.uniform(out, counter_rng.draw_seed(rng), -bound, bound)
    elif kind == "msra":
        counter_rng.normal(out, counter_rng.draw_seed(rng), 0.0, math.sqrt(2.0 / _fan(shape, filler.variance_norm)))
    else:
        fill(shape, filler, rng, where)  # raises the one-line error for an unknown type
