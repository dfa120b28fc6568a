"""Convolution and Deconvolution (Caffe's layers): im2col + one GEMM per group."""

from __future__ import annotations

from typing import Any

from trainer import kernels

from . import register
from .base import Blob, Layer
from .learnable import filler_or_default, make_param_blob


def _pair(repeated: Any, h_set: bool, h: int, w_set: bool, w: int, default: int,
          what: str, layer: Layer) -> tuple[int, int]:
    """Caffe's rule: kernel_h/kernel_w when given, else the repeated field (1 or 2 values)."""
    if h_set or w_set:
        if not (h_set and w_set):
            raise layer.error(f"{what}_h and {what}_w must be given together")
        if len(repeated):
            raise layer.error(f"give either {what}_size/{what} or {what}_h and {what}_w, not both")
        return int(h), int(w)
    values = list(repeated)
    if not values:
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise layer.error(f"{what} has {len(values)} values; only 2-D convolution is supported")


@register("Convolution")
class ConvolutionLayer(Layer):
    """y[n] = W_g · im2col(x[n])_g + b for each group g; N bottoms share the weights."""

    min_bottoms = 1
    min_tops = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.convolution_param
        if len(bottoms) != len(tops):
            raise self.error(f"needs as many tops as bottoms, got {len(bottoms)} and {len(tops)}")
        if p.axis != 1:
            raise self.error(f"axis {p.axis} is not supported (channels must be axis 1)")
        if len(bottoms[0].shape) != 4:
            raise self.error(f"expects a 4-D bottom (N,C,H,W), got {bottoms[0].shape}")
        if not p.kernel_size and not (p.HasField("kernel_h") or p.HasField("kernel_w")):
            raise self.error("kernel_size (or kernel_h and kernel_w) is required")
        self.kh, self.kw = _pair(p.kernel_size, p.HasField("kernel_h"), p.kernel_h,
                                 p.HasField("kernel_w"), p.kernel_w, 1, "kernel", self)
        self.ph, self.pw = _pair(p.pad, p.HasField("pad_h"), p.pad_h, p.HasField("pad_w"), p.pad_w,
                                 0, "pad", self)
        self.sh, self.sw = _pair(p.stride, p.HasField("stride_h"), p.stride_h,
                                 p.HasField("stride_w"), p.stride_w, 1, "stride", self)
        self.dh, self.dw = _pair(p.dilation, False, 0, False, 0, 1, "dilation", self)
        if min(self.kh, self.kw, self.sh, self.sw, self.dh, self.dw) < 1:
            raise self.error("kernel, stride and dilation must be positive")
        if not p.HasField("num_output") or p.num_output < 1:
            raise self.error("num_output must be given and positive")
        self.num_output = int(p.num_output)
        self.group = int(p.group)
        self.channels = bottoms[0].shape[1]
        if self.group < 1 or self.channels % self.group or self.num_output % self.group:
            raise self.error(f"group {self.group} must divide both the input channels "
                             f"({self.channels}) and num_output ({self.num_output})")
        self.bias_term = bool(p.bias_term)
        wshape = self._weight_shape()
        self.blobs = [make_param_blob(self, 0, wshape,
                                      filler_or_default(p.HasField("weight_filler"), p.weight_filler))]
        if self.bias_term:
            self.blobs.append(make_param_blob(self, 1, (self.num_output,),
                                              filler_or_default(p.HasField("bias_filler"), p.bias_filler)))
        self._cols: list[Any] = [None] * len(bottoms)
        self._colbufs: list[Any] = [None] * len(bottoms)

    def _weight_shape(self) -> tuple[int, int, int, int]:
        return (self.num_output, self.channels // self.group, self.kh, self.kw)

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        for b, t in zip(bottoms, tops):
            if len(b.shape) != 4 or b.shape[1] != self.channels:
                raise self.error(f"bottom {b.name} has shape {b.shape}; expected (N,{self.channels},H,W)")
            n, _, h, w = b.shape
            oh = kernels.conv_out_size(h, self.kh, self.ph, self.sh, self.dh)
            ow = kernels.conv_out_size(w, self.kw, self.pw, self.sw, self.dw)
            if oh < 1 or ow < 1:
                raise self.error(f"input {h}x{w} is smaller than the kernel: output would be {oh}x{ow}")
            t.reshape((n, self.num_output, oh, ow))

    def _im2col(self, x: Any, i: int = 0) -> Any:
        col = kernels.im2col(x, self.kh, self.kw, self.ph, self.pw, self.sh, self.sw, self.dh, self.dw,
                             out=self._colbufs[i])
        self._colbufs[i] = col
        return col

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp = self.xp
        w = self.blobs[0].data.reshape(self.num_output, -1)
        g, mg = self.group, self.num_output // self.group
        for i, (b, t) in enumerate(zip(bottoms, tops)):
            n = b.shape[0]
            col = self._im2col(b.data, i)  # (C·kh·kw, N·oh·ow)
            self._cols[i] = col if self.need_backward else None
            kk = col.shape[0] // g
            y = self.workspace("y", (self.num_output, col.shape[1]))
            if g == 1:
                xp.matmul(w, col, out=y)
            else:
                for gi in range(g):
                    xp.matmul(w[gi * mg:(gi + 1) * mg], col[gi * kk:(gi + 1) * kk], out=y[gi * mg:(gi + 1) * mg])
            # (M, N·P) -> (N, M, P) in one pass that also adds the bias; the top's
            # buffer is reused when its shape is unchanged.
            shape = (n, self.num_output, col.shape[1] // n)
            out = t.data.reshape(shape) if t.count == n * y.shape[1] and t.data.flags.c_contiguous else \
                xp.empty(shape, dtype=y.dtype)
            src = y.reshape(self.num_output, n, -1).transpose(1, 0, 2)
            if self.bias_term:
                xp.add(src, self.blobs[1].data.reshape(1, -1, 1), out=out)
            else:
                out[...] = src
            t.data = out.reshape(t.shape)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        xp = self.xp
        w = self.blobs[0].data.reshape(self.num_output, -1)
        g, mg = self.group, self.num_output // self.group
        for i, (t, b) in enumerate(zip(tops, bottoms)):
            n = t.shape[0]
            dy = t.diff.reshape(n, self.num_output, -1)
            if self.bias_term and self.param_needs_grad(1):
                self.add_param_grad(1, dy.sum(axis=(0, 2)))
                self.finish_param_grad(1)
            if not (self.param_needs_grad(0) or propagate_down[i]):
                continue
            col = self._cols[i]
            if col is None:
                col = self._im2col(b.data, i)
            kk = col.shape[0] // g
            # The weight gradient of group g is dy_g (mg × N·P) · col_gᵀ (N·P × kk). Which
            # arrangement OpenBLAS runs faster depends on the shape (benchmarks/RESULTS.md,
            # "weight gradient"): when the batch's pixel count N·P is at least the gradient's
            # size mg·kk (first layers: LeNet's conv1, CaffeNet's conv1, VGG's conv1_x) the
            # transposed col operand wins, by 2-4x for few input channels; otherwise plain
            # row-major operands, col_g · dyᵀ, with dy transposed once. The rule depends on
            # the shapes only, so a net always takes the same path (the same bits run to run).
            long_rows = col.shape[1] >= mg * kk
            dy2 = None
            if propagate_down[i] or (long_rows and self.param_needs_grad(0)):
                dy23 = self.workspace("dy2", (self.num_output, n, dy.shape[2]))
                dy23[...] = dy.transpose(1, 0, 2)
                dy2 = dy23.reshape(self.num_output, -1)  # (M, N·P)
            if self.param_needs_grad(0):
                if long_rows:
                    assert dy2 is not None
                    for gi in range(g):
                        self.add_param_grad(0, dy2[gi * mg:(gi + 1) * mg] @ col[gi * kk:(gi + 1) * kk].T,
                                            slice(gi * mg, (gi + 1) * mg))
                else:
                    dyt3 = self.workspace("dyt", (n, dy.shape[2], self.num_output))
                    dyt3[...] = dy.transpose(0, 2, 1)
                    dyt = dyt3.reshape(-1, self.num_output)  # (N·P, M)
                    for gi in range(g):
                        self.add_param_grad(0, (col[gi * kk:(gi + 1) * kk] @ dyt[:, gi * mg:(gi + 1) * mg]).T,
                                            slice(gi * mg, (gi + 1) * mg))
                self.finish_param_grad(0)
            if propagate_down[i]:
                assert dy2 is not None
                # The data gradient's GEMMs have plain row-major operands (wᵀ made contiguous).
                dcol = self.workspace("dcol", col.shape)
                if g == 1:
                    xp.matmul(xp.ascontiguousarray(w.T), dy2, out=dcol)
                else:
                    for gi in range(g):
                        wt = xp.ascontiguousarray(w[gi * mg:(gi + 1) * mg].T)
                        xp.matmul(wt, dy2[gi * mg:(gi + 1) * mg], out=dcol[gi * kk:(gi + 1) * kk])
                b.diff = kernels.col2im(dcol, b.shape, self.kh, self.kw, self.ph, self.pw,
                                        self.sh, self.sw, self.dh, self.dw)
            self._cols[i] = None


@register("Deconvolution")
class DeconvolutionLayer(ConvolutionLayer):
    """The transpose of Convolution (Caffe's Deconvolution): col2im of Wᵀ·x, for upsampling.

    Weights are (C_in, num_output/group, kh, kw) as in Caffe; the output size is
    stride·(in − 1) + dilation·(kernel − 1) + 1 − 2·pad.
    """

    def _weight_shape(self) -> tuple[int, int, int, int]:
        return (self.channels, self.num_output // self.group, self.kh, self.kw)

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        for b, t in zip(bottoms, tops):
            if len(b.shape) != 4 or b.shape[1] != self.channels:
                raise self.error(f"bottom {b.name} has shape {b.shape}; expected (N,{self.channels},H,W)")
            n, _, h, w = b.shape
            oh = self.sh * (h - 1) + self.dh * (self.kh - 1) + 1 - 2 * self.ph
            ow = self.sw * (w - 1) + self.dw * (self.kw - 1) + 1 - 2 * self.pw
            if oh < 1 or ow < 1:
                raise self.error(f"pad {self.ph},{self.pw} leaves no output for a {h}x{w} input")
            t.reshape((n, self.num_output, oh, ow))

    def _geometry(self) -> tuple[int, ...]:
        return (self.kh, self.kw, self.ph, self.pw, self.sh, self.sw, self.dh, self.dw)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp = self.xp
        g = self.group
        cin_g = self.channels // g
        w = self.blobs[0].data.reshape(self.channels, -1)  # (C_in, C_out/g·kk)
        for b, t in zip(bottoms, tops):
            n = b.shape[0]
            x2 = xp.ascontiguousarray(b.data.reshape(n, self.channels, -1).transpose(1, 0, 2)).reshape(self.channels, -1)
            kk_out = w.shape[1]
            col = xp.empty((g * kk_out, x2.shape[1]), dtype=x2.dtype)
            for gi in range(g):
                wt = xp.ascontiguousarray(w[gi * cin_g:(gi + 1) * cin_g].T)
                xp.matmul(wt, x2[gi * cin_g:(gi + 1) * cin_g], out=col[gi * kk_out:(gi + 1) * kk_out])
            y = kernels.col2im(col, t.shape, *self._geometry())
            if self.bias_term:
                y += self.blobs[1].data.reshape(1, -1, 1, 1)
            t.data = y

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        xp = self.xp
        g = self.group
        cin_g = self.channels // g
        w = self.blobs[0].data.reshape(self.channels, -1)
        kk_out = w.shape[1]
        for i, (t, b) in enumerate(zip(tops, bottoms)):
            n = b.shape[0]
            dy = t.diff
            if self.bias_term and self.param_needs_grad(1):
                self.add_param_grad(1, dy.sum(axis=(0, 2, 3)))
                self.finish_param_grad(1)
            if not (self.param_needs_grad(0) or propagate_down[i]):
                continue
            dcol = kernels.im2col(dy, *self._geometry())  # (C_out·kk, N·H·W)
            x2 = xp.ascontiguousarray(b.data.reshape(n, self.channels, -1).transpose(1, 0, 2)).reshape(self.channels, -1)
            if self.param_needs_grad(0):
                for gi in range(g):
                    self.add_param_grad(0, x2[gi * cin_g:(gi + 1) * cin_g] @ dcol[gi * kk_out:(gi + 1) * kk_out].T,
                                        slice(gi * cin_g, (gi + 1) * cin_g))
                self.finish_param_grad(0)
            if propagate_down[i]:
                dx2 = xp.empty_like(x2)
                for gi in range(g):
                    xp.matmul(w[gi * cin_g:(gi + 1) * cin_g], dcol[gi * kk_out:(gi + 1) * kk_out],
                              out=dx2[gi * cin_g:(gi + 1) * cin_g])
                b.diff = xp.ascontiguousarray(dx2.reshape(self.channels, n, -1).transpose(1, 0, 2)).reshape(b.shape)
