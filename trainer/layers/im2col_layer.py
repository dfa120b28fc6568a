"""Caffe's Im2col: the convolution's column buffer as a top (N × C·kh·kw × oh × ow)."""

from __future__ import annotations

from trainer import kernels

from . import register
from .base import Blob, Layer
from .conv import _pair


@register("Im2col")
class Im2colLayer(Layer):
    """Rows ordered (c, i, j) as Caffe's im2col; kernel/pad/stride/dilation from convolution_param."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.convolution_param
        if not p.kernel_size and not (p.HasField("kernel_h") or p.HasField("kernel_w")):
            raise self.error("kernel_size (or kernel_h and kernel_w) is required")
        self.geometry = (*_pair(p.kernel_size, p.HasField("kernel_h"), p.kernel_h, p.HasField("kernel_w"),
                                p.kernel_w, 1, "kernel", self),
                         *_pair(p.pad, p.HasField("pad_h"), p.pad_h, p.HasField("pad_w"), p.pad_w, 0, "pad", self),
                         *_pair(p.stride, p.HasField("stride_h"), p.stride_h, p.HasField("stride_w"), p.stride_w,
                                1, "stride", self),
                         *_pair(p.dilation, False, 0, False, 0, 1, "dilation", self))

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        if len(bottoms[0].shape) != 4:
            raise self.error(f"expects a 4-D bottom (N,C,H,W), got {bottoms[0].shape}")
        n, c, h, w = bottoms[0].shape
        kh, kw, ph, pw, sh, sw, dh, dw = self.geometry
        self.oh, self.ow = kernels.conv_out_size(h, kh, ph, sh, dh), kernels.conv_out_size(w, kw, pw, sw, dw)
        tops[0].reshape((n, c * kh * kw, self.oh, self.ow))

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        n = bottoms[0].shape[0]
        kh, kw, ph, pw, sh, sw, dh, dw = self.geometry
        col = kernels.im2col(bottoms[0].data, kh, kw, ph, pw, sh, sw, dh, dw)
        tops[0].data = self.xp.ascontiguousarray(col.reshape(-1, n, self.oh, self.ow).transpose(1, 0, 2, 3))

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            n = bottoms[0].shape[0]
            col = self.xp.ascontiguousarray(tops[0].diff.transpose(1, 0, 2, 3)).reshape(-1, n * self.oh * self.ow)
            bottoms[0].diff = kernels.col2im(col, bottoms[0].shape, *self.geometry)
