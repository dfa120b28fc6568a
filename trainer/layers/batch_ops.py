"""Caffe's Parameter, BatchReindex and Filter: a learned blob as a top, and rows picked by index."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import register
from .base import Blob, Layer


def _row_scatter(xp: Any, rows: Any, index: Any, n: int, dtype: Any) -> Any:
    """Σ of ``rows[k]`` into row ``index[k]`` of an (n, ...) array (a one-hot GEMM: no scatter needed)."""
    onehot = (xp.arange(n)[:, None] == index[None, :]).astype(dtype)
    flat = rows.reshape(rows.shape[0], int(np.prod(rows.shape[1:], dtype=np.int64)))  # no -1: 0 rows is allowed
    return (onehot @ flat).reshape((n,) + rows.shape[1:])


def _indices(layer: Layer, blob: Blob, limit: int) -> Any:
    raw = blob.data.reshape(-1)
    index = raw.astype(np.int64)
    bad = (index != raw) | (index < 0) | (index >= limit)
    if bool(bad.any()):
        raise layer.error(f"index {float(raw[layer.xp.flatnonzero(bad)[0]]):g} is not a whole number in 0..{limit - 1}")
    return index


@register("Parameter")
class ParameterLayer(Layer):
    """No bottom; the top is the layer's learnable blob of ``parameter_param.shape`` (zeros at first, as Caffe)."""

    min_bottoms = max_bottoms = 0
    min_tops = max_tops = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        shape = tuple(int(d) for d in self.param.parameter_param.shape.dim)
        self.blobs = [self.param_blob_from_host(np.zeros(shape), 0)]

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        tops[0].reshape(self.blobs[0].shape)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        tops[0].data = self.blobs[0].data

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if self.param_needs_grad(0):
            self.add_param_grad(0, tops[0].diff)
            self.finish_param_grad(0)


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """top[k] = bottom[index[k]] along the first axis; gradients of repeated rows add up."""

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        if len(bottoms[1].shape) != 1:
            raise self.error(f"the index bottom must be 1-D, got {bottoms[1].shape}")
        tops[0].reshape((bottoms[1].shape[0],) + bottoms[0].shape[1:])

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self._index = _indices(self, bottoms[1], bottoms[0].shape[0])
        tops[0].data = self.xp.take(bottoms[0].data, self._index, axis=0)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            bottoms[0].diff = _row_scatter(self.xp, tops[0].diff, self._index, bottoms[0].shape[0], self.dtype)


@register("Filter")
class FilterLayer(Layer):
    """Keep the rows (first axis) whose selector, the last bottom, is non-zero; one top per other bottom.

    Top shapes follow the selector's data, so they may change every batch (as in Caffe); the
    dropped rows get zero gradient and the selector none.
    """

    min_bottoms = 2
    min_tops = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self.n_bottoms = len(bottoms)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index < self.n_bottoms - 1

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        if len(tops) != len(bottoms) - 1:
            raise self.error(f"takes one top per filtered bottom: {len(bottoms) - 1}, got {len(tops)}")
        selector = bottoms[-1]
        for b in bottoms[:-1]:
            if b.shape[:1] != selector.shape[:1]:
                raise self.error(f"bottom {b.name} has {b.shape[:1]} rows, the selector {selector.shape[:1]}")
        keep = self.xp.flatnonzero(selector.data.reshape(selector.shape[0], -1)[:, 0] != 0)
        self._keep = keep
        for b, t in zip(bottoms[:-1], tops):
            t.reshape((int(keep.shape[0]),) + b.shape[1:])

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        for b, t in zip(bottoms[:-1], tops):
            t.data = self.xp.take(b.data, self._keep, axis=0)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        for b, t, down in zip(bottoms[:-1], tops, propagate_down):
            if down:
                b.diff = _row_scatter(self.xp, t.diff, self._keep, b.shape[0], self.dtype)
