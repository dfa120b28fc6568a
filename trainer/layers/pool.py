"""Pooling (MAX, AVE, STOCHASTIC) with Caffe's ceil-mode output size and padding rules."""

from __future__ import annotations

from typing import Any

from datakit.formats import caffe_pb2

from trainer import kernels

from . import pool_stochastic, register
from .base import Blob, Layer

_P = caffe_pb2.PoolingParameter


@register("Pooling")
class PoolingLayer(Layer):
    min_bottoms = max_bottoms = 1
    min_tops = 1
    max_tops = 2  # Caffe: MAX may output its mask as a second top

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.pooling_param
        self.method = p.pool
        if len(tops) == 2 and self.method != _P.MAX:
            raise self.error("only MAX pooling can output a mask top")
        self.global_pooling = bool(p.global_pooling)
        if self.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise self.error("global_pooling takes the whole map: do not give a kernel size")
        elif p.HasField("kernel_size"):
            if p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise self.error("give either kernel_size or kernel_h and kernel_w, not both")
            self.kh = self.kw = int(p.kernel_size)
        elif p.HasField("kernel_h") and p.HasField("kernel_w"):
            self.kh, self.kw = int(p.kernel_h), int(p.kernel_w)
        else:
            raise self.error("kernel_size (or kernel_h and kernel_w) is required")
        if p.HasField("pad_h") or p.HasField("pad_w"):
            self.ph, self.pw = int(p.pad_h), int(p.pad_w)
        else:
            self.ph = self.pw = int(p.pad)
        if p.HasField("stride_h") or p.HasField("stride_w"):
            self.sh, self.sw = int(p.stride_h), int(p.stride_w)
        else:
            self.sh = self.sw = int(p.stride)
        if self.global_pooling and (self.ph or self.pw or self.sh != 1 or self.sw != 1):
            raise self.error("global_pooling needs pad 0 and stride 1")
        if not self.global_pooling and min(self.kh, self.kw) < 1:
            raise self.error("kernel size must be positive")
        if min(self.sh, self.sw) < 1:
            raise self.error("stride must be positive")
        if not self.global_pooling and (self.ph >= self.kh or self.pw >= self.kw):
            raise self.error(f"pad ({self.ph},{self.pw}) must be smaller than the kernel ({self.kh},{self.kw})")
        self.ceil_mode = p.round_mode == _P.CEIL
        self._arg: Any = None

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        shape = bottoms[0].shape
        if len(shape) != 4:
            raise self.error(f"expects a 4-D bottom (N,C,H,W), got {shape}")
        n, c, h, w = shape
        if self.global_pooling:
            self.kh, self.kw = h, w
        padded = bool(self.ph or self.pw)  # Caffe's `pad_h || pad_w`: either pad enables the last-window rule
        self.oh = kernels.pool_out_size(h, self.kh, self.ph, self.sh, self.ceil_mode, padded=padded)
        self.ow = kernels.pool_out_size(w, self.kw, self.pw, self.sw, self.ceil_mode, padded=padded)
        if self.oh < 1 or self.ow < 1:
            raise self.error(f"input {h}x{w} is too small for kernel {self.kh}x{self.kw}")
        # A stride longer than the kernel can leave a last (ceil-mode) window with no input cell
        # in it: Caffe writes NaN there (AVE: 0/0) or -FLT_MAX (MAX, whose backward then writes
        # outside the bottom). Said here instead of computed.
        for axis, size, out, stride, pad in (("row", h, self.oh, self.sh, self.ph), ("column", w, self.ow, self.sw, self.pw)):
            start = (out - 1) * stride - pad
            if start >= size:
                raise self.error(f"its last pooling window starts at {axis} {start} of a {size}-{axis} input "
                                 f"(stride {stride} is longer than the kernel) and would cover no input; "
                                 "give pad, a shorter stride or round_mode: FLOOR")
        for t in tops:
            t.reshape((n, c, self.oh, self.ow))

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = bottoms[0].data
        args = (self.kh, self.kw, self.ph, self.pw, self.sh, self.sw, self.oh, self.ow)
        if self.method == _P.STOCHASTIC:
            self._forward_stochastic(x, tops)
        elif self.method == _P.MAX and self.phase == caffe_pb2.TEST and len(tops) == 1:
            # No backward follows a TEST forward (but `trainer time`'s): skip the argmax, 3x less work.
            tops[0].data = kernels.max_pool_values(x, *args)
            self._arg = None
        elif self.method == _P.MAX:
            y, arg = kernels.max_pool_forward(x, *args)
            self._arg = arg
            tops[0].data = y
            if len(tops) == 2:
                # Caffe's mask top: the flat input index (h*W + w) of each maximum.
                xp = self.xp
                i, j = arg // self.kw, arg % self.kw
                hs = (xp.arange(self.oh) * self.sh - self.ph).reshape(1, 1, -1, 1)
                ws = (xp.arange(self.ow) * self.sw - self.pw).reshape(1, 1, 1, -1)
                tops[1].data = ((hs + i) * x.shape[3] + (ws + j)).astype(self.dtype)
        else:
            tops[0].data = kernels.ave_pool_forward(x, *args)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if not propagate_down[0]:
            return
        args = (self.kh, self.kw, self.ph, self.pw, self.sh, self.sw)
        shape = bottoms[0].shape
        if self.method == _P.STOCHASTIC:
            geometry = (self.kh, self.kw, self.sh, self.sw)
            bottoms[0].diff = (pool_stochastic.backward_train(tops[0].diff, self._arg, shape, *geometry)
                               if self.phase == caffe_pb2.TRAIN else
                               pool_stochastic.backward_test(tops[0].diff, bottoms[0].data, *geometry))
        elif self.method == _P.MAX:
            if self._arg is None:  # a TEST forward skipped it
                _, self._arg = kernels.max_pool_forward(bottoms[0].data, *args, self.oh, self.ow)
            bottoms[0].diff = kernels.max_pool_backward(tops[0].diff, self._arg, shape, *args)
        else:
            bottoms[0].diff = kernels.ave_pool_backward(tops[0].diff, shape, *args)

    def _forward_stochastic(self, x: Any, tops: list[Blob]) -> None:
        geometry = (self.kh, self.kw, self.sh, self.sw, self.oh, self.ow)
        if self.phase == caffe_pb2.TRAIN:
            # Uniforms drawn by the net's host generator (seeded, saved with snapshots), so runs
            # repeat and resume exactly on either device; they are one per output, not per input.
            u = self.xp.asarray(self.rng.random(tops[0].shape).astype(self.dtype))
            tops[0].data, self._arg = pool_stochastic.forward_train(x, u, *geometry)
        else:
            tops[0].data = pool_stochastic.forward_test(x, *geometry)
