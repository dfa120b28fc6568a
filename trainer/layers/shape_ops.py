"""Caffe's Bias, Tile, Reduction, ArgMax and Crop: broadcasting, repeating, summing, ranking and cutting blobs."""

from __future__ import annotations

from typing import Any

import numpy as np

from datakit.formats import caffe_pb2

from . import register
from .base import Blob, Layer, canonical_axis
from .learnable import filler_or_default, make_param_blob

_R = caffe_pb2.ReductionParameter


def _count(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


@register("Bias")
class BiasLayer(Layer):
    """y = x + b, b broadcast over axes [axis, axis + b.ndim) of x (Caffe's Bias).

    One bottom: b is learned, of shape x.shape[axis:axis+num_axes] (num_axes -1: to the end),
    filled by ``filler`` (constant 0 by default). Two bottoms: the second is b.
    """

    min_bottoms = 1
    max_bottoms = 2
    min_tops = max_tops = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.bias_param
        shape = bottoms[0].shape
        self.axis = canonical_axis(p.axis, len(shape), self.name) if shape else 0
        if len(bottoms) == 2:
            self.b_shape = bottoms[1].shape
            return
        n = len(shape) - self.axis if p.num_axes == -1 else int(p.num_axes)
        if n < -1 or self.axis + n > len(shape):
            raise self.error(f"num_axes {p.num_axes} does not fit a bottom of shape {shape}")
        self.b_shape = tuple(shape[self.axis:self.axis + n])
        self.blobs = [make_param_blob(self, 0, self.b_shape, filler_or_default(p.HasField("filler"), p.filler))]

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        shape = bottoms[0].shape
        if tuple(shape[self.axis:self.axis + len(self.b_shape)]) != tuple(self.b_shape):
            raise self.error(f"bias of shape {self.b_shape} does not match bottom {shape} at axis {self.axis}")
        tops[0].reshape(shape)

    def _view(self, ndim: int) -> tuple[int, ...]:
        return (1,) * self.axis + tuple(self.b_shape) + (1,) * (ndim - self.axis - len(self.b_shape))

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        b = bottoms[1].data if len(bottoms) == 2 else self.blobs[0].data
        tops[0].data = bottoms[0].data + b.reshape(self._view(bottoms[0].data.ndim))

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        dy = tops[0].diff
        view = self._view(dy.ndim)
        axes = tuple(i for i in range(dy.ndim) if view[i] == 1)
        if len(bottoms) == 2 and propagate_down[1]:
            bottoms[1].diff = dy.sum(axis=axes).reshape(self.b_shape)
        elif len(bottoms) == 1 and self.param_needs_grad(0):
            self.add_param_grad(0, dy.sum(axis=axes).reshape(self.b_shape))
            self.finish_param_grad(0)
        if propagate_down[0] and tops[0] is not bottoms[0]:
            bottoms[0].diff = dy


@register("Tile")
class TileLayer(Layer):
    """Repeat the bottom ``tiles`` times along ``axis``: each block [axis:] is copied whole."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.tile_param
        if not p.HasField("tiles") or p.tiles < 1:
            raise self.error("tile_param.tiles must be given and positive")
        self.tiles = int(p.tiles)

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        shape = bottoms[0].shape
        self.axis = canonical_axis(self.param.tile_param.axis, len(shape), self.name)
        self.outer = _count(shape[:self.axis])
        tops[0].reshape(shape[:self.axis] + (shape[self.axis] * self.tiles,) + shape[self.axis + 1:])

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = bottoms[0].data.reshape(self.outer, 1, -1)
        tops[0].data = self.xp.ascontiguousarray(
            self.xp.broadcast_to(x, (self.outer, self.tiles, x.shape[2]))).reshape(tops[0].shape)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            dy = tops[0].diff.reshape(self.outer, self.tiles, -1)
            bottoms[0].diff = dy.sum(axis=1).reshape(bottoms[0].shape)


@register("Reduction")
class ReductionLayer(Layer):
    """Reduce all axes from ``axis`` on: SUM, ASUM (Σ|x|), SUMSQ (Σx²) or MEAN, times ``coeff``.

    The top has the bottom's leading axes (a scalar for axis 0, the default).
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.reduction_param
        self.op, self.coeff = p.operation, float(p.coeff)

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        shape = bottoms[0].shape
        self.axis = canonical_axis(self.param.reduction_param.axis, len(shape), self.name) if shape else 0
        self.num, self.dim = _count(shape[:self.axis]), _count(shape[self.axis:])
        tops[0].reshape(shape[:self.axis])

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = bottoms[0].data.reshape(self.num, self.dim)
        if self.op == _R.ASUM:
            r = self.xp.abs(x).sum(axis=1)
        elif self.op == _R.SUMSQ:
            r = (x * x).sum(axis=1)
        else:
            r = x.sum(axis=1) / (self.dim if self.op == _R.MEAN else 1)
        tops[0].data = (r * self.coeff).reshape(tops[0].shape).astype(self.dtype, copy=False)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if not propagate_down[0]:
            return
        g = tops[0].diff.reshape(self.num, 1) * self.coeff
        x = bottoms[0].data.reshape(self.num, self.dim)
        if self.op == _R.ASUM:
            dx = self.xp.sign(x) * g
        elif self.op == _R.SUMSQ:
            dx = 2 * x * g
        else:
            dx = self.xp.broadcast_to(g / (self.dim if self.op == _R.MEAN else 1), x.shape)
        bottoms[0].diff = self.xp.ascontiguousarray(dx).reshape(bottoms[0].shape)


@register("Crop")
class CropLayer(Layer):
    """Cut bottom 0 to bottom 1's shape on the axes from ``axis`` (FCN's Crop).

    ``offset``: none (0 everywhere), one value for every cropped axis, or one per axis.
    Bottom 1 only gives the shape and gets no gradient.
    """

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.crop_param
        a, b = bottoms[0].shape, bottoms[1].shape
        if len(a) != len(b):
            raise self.error(f"bottoms have {len(a)} and {len(b)} axes; they must have as many")
        start = canonical_axis(p.axis, len(a), self.name)
        n = len(a) - start
        offsets = [int(o) for o in p.offset]
        if len(offsets) not in (0, 1, n):
            raise self.error(f"gives {len(offsets)} offsets for {n} cropped axes (give 0, 1 or {n})")
        offsets = offsets * n if len(offsets) == 1 else (offsets or [0] * n)
        index: list[Any] = [slice(None)] * start
        out = list(a[:start])
        for k, off in enumerate(offsets):
            size = b[start + k]
            if off + size > a[start + k]:
                raise self.error(f"axis {start + k}: offset {off} + crop size {size} exceeds the bottom's "
                                 f"{a[start + k]}")
            index.append(slice(off, off + size))
            out.append(size)
        self.index = tuple(index)
        tops[0].reshape(tuple(out))

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        tops[0].data = self.xp.ascontiguousarray(bottoms[0].data[self.index])

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            dx = self.xp.zeros(bottoms[0].shape, dtype=self.dtype)
            dx[self.index] = tops[0].diff
            bottoms[0].diff = dx


@register("ArgMax")
class ArgMaxLayer(Layer):
    """Indices (and with out_max_val, values) of the top_k largest entries per sample (no gradient)."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.argmax_param
        self.top_k, self.out_max_val = int(p.top_k), bool(p.out_max_val)
        self.axis = canonical_axis(p.axis, len(bottoms[0].shape), self.name) if p.HasField("axis") else None

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        shape = bottoms[0].shape
        out: tuple[int, ...]
        if self.axis is None:
            k_max = int(np.prod(shape[1:], dtype=np.int64))
            out = (shape[0], 2 if self.out_max_val else 1, self.top_k)
        else:
            k_max = shape[self.axis]
            out = shape[:self.axis] + (self.top_k,) + shape[self.axis + 1:]
        if self.top_k > k_max:
            raise self.error(f"top_k {self.top_k} exceeds the {k_max} values to rank")
        tops[0].reshape(out)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp, x = self.xp, bottoms[0].data
        if self.axis is None:
            flat = x.reshape(x.shape[0], -1)
            idx = xp.argsort(-flat, axis=1, kind="stable")[:, :self.top_k]
            vals = xp.take_along_axis(flat, idx, axis=1)
            out = xp.stack([idx.astype(self.dtype), vals], axis=1) if self.out_max_val \
                else idx.astype(self.dtype)[:, None, :]
        else:
            idx = xp.take(xp.argsort(-x, axis=self.axis, kind="stable"), xp.arange(self.top_k), axis=self.axis)
            out = xp.take_along_axis(x, idx, axis=self.axis) if self.out_max_val else idx.astype(self.dtype)
        tops[0].data = xp.ascontiguousarray(out).astype(self.dtype)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        pass
