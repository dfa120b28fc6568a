"""Dense layers: InnerProduct (a GEMM with learned weights), Eltwise (SUM/PROD/MAX of bottoms), Scale.

The layers that only move data (Split, Silence, Flatten, Reshape, Concat, Slice) are in
``structural``; ArgMax is beside Reduction in ``shape_ops``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datakit.formats import caffe_pb2

from . import register
from .base import Blob, Layer, canonical_axis
from .learnable import filler_or_default, make_param_blob


def _product(xp: Any, a: Any, b: Any, out: Any = None) -> Any:
    """a·b (into ``out`` when given). With an inner dimension of 1 (the weight gradient at batch 1, the
    data gradient of a single output) NumPy's matmul takes a slow loop (fc6's 4096x9216 weight
    gradient: 71 ms against 13 ms for the multiply); the outer product gives the same bits once
    ``+ 0`` turns its signed zeros into the +0 that matmul's sum starts from."""
    if xp is np and a.shape[1] == 1:
        out = np.multiply(a, b, out=out)
        out += out.dtype.type(0)
        return out
    return xp.matmul(a, b, out=out)


@register("InnerProduct")
class InnerProductLayer(Layer):
    """y = x·Wᵀ + b on x flattened from ``axis``; W is (num_output, K), or (K, num_output) with transpose."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.inner_product_param
        if not p.HasField("num_output") or p.num_output < 1:
            raise self.error("num_output must be given and positive")
        self.num_output = int(p.num_output)
        self.axis = canonical_axis(p.axis, len(bottoms[0].shape), self.name)
        self.k = int(np.prod(bottoms[0].shape[self.axis:], dtype=np.int64))
        self.transpose = bool(p.transpose)
        self.bias_term = bool(p.bias_term)
        wshape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        self.blobs = [make_param_blob(self, 0, wshape,
                                      filler_or_default(p.HasField("weight_filler"), p.weight_filler))]
        if self.bias_term:
            self.blobs.append(make_param_blob(self, 1, (self.num_output,),
                                              filler_or_default(p.HasField("bias_filler"), p.bias_filler)))

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        shape = bottoms[0].shape
        k = int(np.prod(shape[self.axis:], dtype=np.int64))
        if k != self.k:
            raise self.error(f"bottom {bottoms[0].name} has {k} inputs per sample from axis "
                             f"{self.axis} (shape {shape}); the weights expect {self.k}")
        tops[0].reshape(tuple(shape[:self.axis]) + (self.num_output,))

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp = self.xp
        x = bottoms[0].data.reshape(-1, self.k)
        w = self.blobs[0].data
        # GEMMs with plain row-major operands only (see ConvolutionLayer.backward).
        if self.transpose:
            y = x @ w
        else:
            y = xp.ascontiguousarray((w @ xp.ascontiguousarray(x.T)).T)
        if self.bias_term:
            y += self.blobs[1].data
        tops[0].data = y.reshape(tops[0].shape)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        xp = self.xp
        dy = tops[0].diff.reshape(-1, self.num_output)
        x = bottoms[0].data.reshape(-1, self.k)
        if not self.param_needs_grad(0):
            pass
        else:
            a, b = (xp.ascontiguousarray(x.T), dy) if self.transpose else (xp.ascontiguousarray(dy.T), x)
            wblob = self.blobs[0]
            if wblob.diff_zero:
                _product(xp, a, b, out=wblob.diff)  # straight into the gradient, no temporary
            else:
                # Accumulating (iter_size, shared weights, `trainer time`): the product goes into a
                # buffer kept between iterations; a fresh fc6-sized temporary cost more page faults
                # than the GEMM itself.
                grad = self.workspace("dw", wblob.diff.shape)
                _product(xp, a, b, out=grad)
                wblob.diff += grad
            self.finish_param_grad(0)
        if self.bias_term and self.param_needs_grad(1):
            self.add_param_grad(1, dy.sum(axis=0))
            self.finish_param_grad(1)
        if propagate_down[0]:
            w = self.blobs[0].data
            if self.transpose:
                dx = xp.ascontiguousarray(_product(xp, w, xp.ascontiguousarray(dy.T)).T)
            else:
                dx = _product(xp, dy, w)
            bottoms[0].diff = dx.reshape(bottoms[0].shape)



@register("Eltwise")
class EltwiseLayer(Layer):
    """SUM (with coeff), PROD or MAX of same-shaped bottoms."""

    min_bottoms = 2
    min_tops = max_tops = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.eltwise_param
        self.op = p.operation
        if p.coeff and (self.op != caffe_pb2.EltwiseParameter.SUM or len(p.coeff) != len(bottoms)):
            raise self.error("coeff needs operation SUM and one value per bottom")
        self.coeff = [float(c) for c in p.coeff] or [1.0] * len(bottoms)
        self._argmax: Any = None

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        for b in bottoms[1:]:
            if b.shape != bottoms[0].shape:
                raise self.error(f"bottom {b.name} has shape {b.shape}, expected {bottoms[0].shape}")
        tops[0].reshape(bottoms[0].shape)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp = self.xp
        E = caffe_pb2.EltwiseParameter
        if self.op == E.SUM:
            y = bottoms[0].data * self.coeff[0]
            for c, b in zip(self.coeff[1:], bottoms[1:]):
                y = y + c * b.data
        elif self.op == E.PROD:
            y = bottoms[0].data.copy()
            for b in bottoms[1:]:
                y = y * b.data
        else:
            y = bottoms[0].data.copy()
            arg = xp.zeros(y.shape, dtype=np.int32)
            for i, b in enumerate(bottoms[1:], start=1):
                better = b.data > y  # Caffe keeps the first maximum
                y = xp.where(better, b.data, y)
                arg = xp.where(better, i, arg)
            self._argmax = arg
        tops[0].data = y

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        E = caffe_pb2.EltwiseParameter
        dy = tops[0].diff
        for i, (b, down) in enumerate(zip(bottoms, propagate_down)):
            if not down:
                continue
            if self.op == E.SUM:
                b.diff = dy * self.coeff[i] if self.coeff[i] != 1.0 else dy.copy()
            elif self.op == E.PROD:
                g = dy.copy()
                for j, other in enumerate(bottoms):
                    if j != i:
                        g = g * other.data
                b.diff = g
            else:
                b.diff = dy * (self._argmax == i)


@register("Scale")
class ScaleLayer(Layer):
    """y = x · s (+ b), s broadcast over axes [axis, axis+num_axes) of x (Caffe's Scale).

    With one bottom, s is learned (filler default constant 1); with two, the
    second bottom is s. ``bias_term`` adds a learned b of s's shape (ResNet's
    BatchNorm + Scale pairs).
    """

    min_bottoms = 1
    max_bottoms = 2
    min_tops = max_tops = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.scale_param
        x_shape = bottoms[0].shape
        self.axis = canonical_axis(p.axis, len(x_shape), self.name) if x_shape else 0
        if len(bottoms) == 2:
            s_shape = bottoms[1].shape
        else:
            n = len(x_shape) - self.axis if p.num_axes == -1 else int(p.num_axes)
            if n < 0 or self.axis + n > len(x_shape):
                raise self.error(f"num_axes {p.num_axes} does not fit a bottom of shape {x_shape}")
            s_shape = tuple(x_shape[self.axis:self.axis + n])
            filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=1.0)
            self.blobs.append(make_param_blob(self, 0, s_shape, filler))
        self.s_shape = s_shape
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            self.blobs.append(make_param_blob(self, len(self.blobs), s_shape,
                                              filler_or_default(p.HasField("bias_filler"), p.bias_filler)))
        self._x: Any = None

    def _bshape(self, ndim: int) -> tuple[int, ...]:
        trailing = ndim - self.axis - len(self.s_shape)
        return (1,) * self.axis + tuple(self.s_shape) + (1,) * trailing

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x_shape = bottoms[0].shape
        if tuple(x_shape[self.axis:self.axis + len(self.s_shape)]) != tuple(self.s_shape):
            raise self.error(f"scale of shape {self.s_shape} does not match bottom {x_shape} at axis {self.axis}")
        tops[0].reshape(x_shape)

    def _scale(self, bottoms: list[Blob]) -> Any:
        return bottoms[1].data if len(bottoms) == 2 else self.blobs[0].data

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = bottoms[0].data
        bs = self._bshape(x.ndim)
        self._x = x.copy() if tops[0] is bottoms[0] and self.need_backward else x
        y = x * self._scale(bottoms).reshape(bs)
        if self.bias_term:
            y += self.blobs[-1].data.reshape(bs)
        tops[0].data = y

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        dy = tops[0].diff
        bs = self._bshape(dy.ndim)
        reduce_axes = tuple(i for i in range(dy.ndim) if bs[i] == 1 and dy.shape[i] != 1 or
                            (bs[i] == 1 and i < self.axis) or (bs[i] == 1 and i >= self.axis + len(self.s_shape)))
        s = self._scale(bottoms)
        if self.bias_term and self.param_needs_grad(len(self.blobs) - 1):
            k = len(self.blobs) - 1
            self.add_param_grad(k, dy.sum(axis=reduce_axes).reshape(self.s_shape))
            self.finish_param_grad(k)
        ds = (dy * self._x).sum(axis=reduce_axes).reshape(self.s_shape)
        if len(bottoms) == 2:
            if propagate_down[1]:
                bottoms[1].diff = ds.reshape(bottoms[1].shape)
        elif self.param_needs_grad(0):
            self.add_param_grad(0, ds)
            self.finish_param_grad(0)
        if propagate_down[0]:
            bottoms[0].diff = dy * s.reshape(bs)
