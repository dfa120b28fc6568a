"""Caffe's SPP (spatial pyramid pooling): pooling at 1, 2, 4, ... bins per side, concatenated."""

from __future__ import annotations

import math

from datakit.formats import caffe_pb2

from . import register
from .base import Blob, Layer
from .pool import PoolingLayer


@register("SPP")
class SPPLayer(Layer):
    """Level i pools the map into 2^i × 2^i bins: kernel ceil(H / 2^i), stride = kernel,
    pad (kernel·2^i − H + 1) / 2, as Caffe's SPPLayer::GetPoolingParam.

    The top is (N, C·Σ 4^i), each level flattened and concatenated in order; with
    ``pyramid_height: 1`` it is the single level's (N, C, 1, 1), as in Caffe.
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.spp_param
        if not p.HasField("pyramid_height") or p.pyramid_height < 1:
            raise self.error("spp_param.pyramid_height must be given and positive")
        self.height, self.method = int(p.pyramid_height), p.pool
        self._size: tuple[int, int] | None = None

    def _level_param(self, level: int, h: int, w: int) -> caffe_pb2.LayerParameter:
        bins = 2 ** level
        kh, kw = math.ceil(h / bins), math.ceil(w / bins)
        lp = caffe_pb2.LayerParameter(name=f"{self.name} level {level}", type="Pooling")
        pp = lp.pooling_param
        pp.pool = self.method
        pp.kernel_h, pp.kernel_w = kh, kw
        pp.stride_h, pp.stride_w = kh, kw
        pp.pad_h, pp.pad_w = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
        return lp

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        shape = bottoms[0].shape
        if len(shape) != 4:
            raise self.error(f"expects a 4-D bottom (N,C,H,W), got {shape}")
        n, c, h, w = shape
        if self._size != (h, w):
            self._size = (h, w)
            self.levels: list[tuple[PoolingLayer, Blob]] = []
            for level in range(self.height):
                pool = PoolingLayer(self._level_param(level, h, w), self.phase, self.xp, dtype=self.dtype,
                                    rng=self.rng, base_dir=self.base_dir)
                out = self.new_blob((), f"{self.name}[level {level}]")
                pool.setup(bottoms, [out])
                self.levels.append((pool, out))
        for pool, out in self.levels:
            pool.reshape(bottoms, [out])
        if self.height == 1:
            tops[0].reshape(self.levels[0][1].shape)
        else:
            tops[0].reshape((n, sum(out.count // n for _, out in self.levels)))

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        for pool, out in self.levels:
            pool.forward(bottoms, [out])
        n = bottoms[0].shape[0]
        parts = [out.data.reshape(n, -1) for _, out in self.levels]
        tops[0].data = (self.xp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]).reshape(tops[0].shape)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if not propagate_down[0]:
            return
        n = bottoms[0].shape[0]
        dy = tops[0].diff.reshape(n, -1)
        offset, total = 0, None
        for pool, out in self.levels:
            size = out.count // n
            out.diff = self.xp.ascontiguousarray(dy[:, offset:offset + size]).reshape(out.shape)
            offset += size
            pool.backward([out], [True], bottoms)
            total = bottoms[0].diff if total is None else total + bottoms[0].diff
        bottoms[0].diff = total
