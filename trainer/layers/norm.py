"""Normalization: LRN (ACROSS_CHANNELS and WITHIN_CHANNEL) and BatchNorm, with Caffe's formulas."""

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
        spow = None
        if self.region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            y, scale, spow = kernels.lrn_across_forward_keep(x, self.size, self.alpha, self.beta, self.k)
        else:
            pooled = kernels.ave_pool_forward(x * x, *self._within_args(x.shape))
            scale = 1.0 + self.alpha * pooled
            y = x * scale ** (-self.beta)
        # Saved for backward (x is copied when the layer runs in place).
        keep_x = x.copy() if tops[0] is bottoms[0] and self.need_backward else x
        self._saved = (keep_x, y, scale, spow) if self.need_backward else ()
        tops[0].data = y

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if not propagate_down[0]:
            return
        x, y, scale, spow = self._saved
        dy = tops[0].diff
        if self.region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            dx = kernels.lrn_across_backward(x, y, scale, dy, self.size, self.alpha, self.beta, spow=spow)
        else:
            a = self._within_args(x.shape)
            # d/dP of x·(1+αP)^-β, chained through the average pooling of x².
            g = dy * x * (-self.beta * self.alpha) * scale ** (-self.beta - 1.0)
            dpool = kernels.ave_pool_backward(g, x.shape, *a[:6])
            dx = dy * scale ** (-self.beta) + 2.0 * x * dpool
        bottoms[0].diff = dx
        self._saved = ()


@register("BatchNorm")
class BatchNormLayer(Layer):
    """Caffe's BatchNorm: normalise each channel; statistics live in three blobs.

    blobs: running mean sum, running variance sum, and the scale factor they
    are divided by (Caffe's moving-average bookkeeping, so its caffemodels load
    as they are). TRAIN uses the batch statistics and updates the running ones
    (variance with the m/(m-1) correction); TEST, or ``use_global_stats``, uses
    the stored ones. The blobs are never learned: their lr_mult is 0 as in Caffe.
    The learned scale and shift come from a following Scale layer.
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1
    fixed_params = True

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.batch_norm_param
        for k, spec in enumerate(self.param.param):
            if spec.HasField("lr_mult") and spec.lr_mult != 0:
                raise self.error(f"param {k} has lr_mult {spec.lr_mult}: batch statistics cannot be learned "
                                 "(use lr_mult: 0, or a Scale layer for a learned scale)")
        self.use_global = p.use_global_stats if p.HasField("use_global_stats") else \
            self.phase == caffe_pb2.TEST
        self.maf = float(p.moving_average_fraction)
        self.eps = float(p.eps)
        shape = bottoms[0].shape
        if len(shape) < 2:
            raise self.error(f"needs a bottom with a channel axis, got {shape}")
        c = shape[1]
        self.blobs = [self.new_blob((c,), f"{self.name}[0]"), self.new_blob((c,), f"{self.name}[1]"),
                      self.new_blob((1,), f"{self.name}[2]")]
        self._saved: tuple[Any, ...] = ()

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        if bottoms[0].shape[1] != self.blobs[0].shape[0]:
            raise self.error(f"bottom has {bottoms[0].shape[1]} channels, the statistics {self.blobs[0].shape[0]}")
        tops[0].reshape(bottoms[0].shape)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp, x = self.xp, bottoms[0].data
        n, c = x.shape[:2]
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, c) + (1,) * (x.ndim - 2)
        if self.use_global:
            factor = float(self.blobs[2].data.reshape(-1)[0])
            factor = 0.0 if factor == 0 else 1.0 / factor
            mean = self.blobs[0].data * factor
            var = self.blobs[1].data * factor
        else:
            mean = x.mean(axis=axes)
            var = ((x - mean.reshape(bshape)) ** 2).mean(axis=axes)
            m = x.size // c
            self.blobs[2].data *= self.maf
            self.blobs[2].data += 1
            self.blobs[0].data *= self.maf
            self.blobs[0].data += mean
            self.blobs[1].data *= self.maf
            self.blobs[1].data += var * (m / (m - 1) if m > 1 else 1.0)
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        xhat = (x - mean.reshape(bshape)) * inv_std.reshape(bshape)
        self._saved = (xhat, inv_std, axes, bshape)
        tops[0].data = xhat

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if not propagate_down[0]:
            return
        xhat, inv_std, axes, bshape = self._saved
        dy = tops[0].diff
        if self.use_global:
            bottoms[0].diff = dy * inv_std.reshape(bshape)
            return
        # dx = (dy - mean(dy) - xhat * mean(dy * xhat)) / std, the means over all but the channel axis
        g = dy - dy.mean(axis=axes).reshape(bshape) - xhat * (dy * xhat).mean(axis=axes).reshape(bshape)
        bottoms[0].diff = g * inv_std.reshape(bshape)
