"""Caffe's MVN: mean-variance normalisation per sample (and per channel unless across_channels)."""

from __future__ import annotations

from typing import Any

from . import register
from .base import Blob, Layer


@register("MVN")
class MVNLayer(Layer):
    """y = (x − mean) / (std + eps), mean and std over each row of the bottom.

    A row is one channel of one sample ((N·C) × (H·W)), or a whole sample with
    ``across_channels`` (N × (C·H·W)). std is sqrt(E[x²] − E[x]²), as Caffe computes it;
    ``normalize_variance: false`` only subtracts the mean. Backward is Caffe's formula
    (exact for eps = 0, off by eps/std relatively otherwise, as Caffe's is).
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across = bool(p.across_channels)
        self.eps = float(p.eps)
        self._std: Any = None

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        shape = bottoms[0].shape
        if len(shape) < 2 and not self.across:
            raise self.error(f"needs a channel axis (bottom {shape}) unless across_channels")
        self.rows = shape[0] if self.across else shape[0] * shape[1]
        tops[0].reshape(shape)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp = self.xp
        x = bottoms[0].data.reshape(self.rows, -1)
        mean = x.mean(axis=1, keepdims=True)
        y = x - mean
        if self.normalize_variance:
            var = xp.maximum((x * x).mean(axis=1, keepdims=True) - mean * mean, 0)
            self._std = xp.sqrt(var) + self.eps
            y = y / self._std
        tops[0].data = y.reshape(bottoms[0].shape)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if not propagate_down[0]:
            return
        dy = tops[0].diff.reshape(self.rows, -1)
        if not self.normalize_variance:
            dx = dy - dy.mean(axis=1, keepdims=True)
        else:
            y = tops[0].data.reshape(self.rows, -1)
            dx = (dy - dy.mean(axis=1, keepdims=True) - y * (y * dy).mean(axis=1, keepdims=True)) / self._std
        bottoms[0].diff = dx.reshape(bottoms[0].shape)
