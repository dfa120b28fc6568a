"""Local Response Normalization (ACROSS_CHANNELS and WITHIN_CHANNEL), Caffe's formulas."""

from __future__ import annotations

from typing import Any

from datakit.formats import caffe_pb2

from trainer import kernels

from . import register
from .base import Blob, Layer


@register("LRN")
class LRNLayer(Layer):
    """ACROSS: y = x·(k + α/n Σ x²)^-β; WITHIN: y = x·(1 + α·avepool(x²))^-β."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 == 0:
            raise self.error(f"local_size must be odd, got {self.size}")
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = p.norm_region
        self._saved: tuple[Any, ...] = ()

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        if len(bottoms[0].shape) != 4:
            raise self.error(f"expects a 4-D bottom (N,C,H,W), got {bottoms[0].shape}")
        tops[0].reshape(bottoms[0].shape)

    def _within_args(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        pad = (self.size - 1) // 2
        h, w = shape[2:]
        oh = kernels.pool_out_size(h, self.size, pad, 1)
        ow = kernels.pool_out_size(w, self.size, pad, 1)
        return (self.size, self.size, pad, pad, 1, 1, oh, ow)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = bottoms[0].data
        if self.region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            y, scale = kernels.lrn_across_forward(x, self.size, self.alpha, self.beta, self.k)
        else:
            pooled = kernels.ave_pool_forward(x * x, *self._within_args(x.shape))
            scale = 1.0 + self.alpha * pooled
            y = x * scale ** (-self.beta)
        # Saved for backward (x is copied when the layer runs in place).
        keep_x = x.copy() if tops[0] is bottoms[0] and self.need_backward else x
        self._saved = (keep_x, y, scale) if self.need_backward else ()
        tops[0].data = y

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if not propagate_down[0]:
            return
        x, y, scale = self._saved
        dy = tops[0].diff
        if self.region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            dx = kernels.lrn_across_backward(x, y, scale, dy, self.size, self.alpha, self.beta)
        else:
            a = self._within_args(x.shape)
            # d/dP of x·(1+αP)^-β, chained through the average pooling of x².
            g = dy * x * (-self.beta * self.alpha) * scale ** (-self.beta - 1.0)
            dpool = kernels.ave_pool_backward(g, x.shape, *a[:6])
            dx = dy * scale ** (-self.beta) + 2.0 * x * dpool
        bottoms[0].diff = dx
        self._saved = ()
