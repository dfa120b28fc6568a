"""Dense and structural layers: InnerProduct, Scale; Split, Silence, Flatten, Reshape, Concat, Slice, Eltwise, ArgMax."""

from __future__ import annotations

from typing import Any

import numpy as np

from datakit.formats import caffe_pb2

from . import register
from .base import Blob, Layer, canonical_axis
from .learnable import filler_or_default, make_param_blob


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
                xp.matmul(a, b, out=wblob.diff)  # straight into the gradient, no temporary
            else:
                # Accumulating (iter_size, shared weights, `trainer time`): the product goes into a
                # buffer kept between iterations; a fresh fc6-sized temporary cost more page faults
                # than the GEMM itself.
                grad = self.workspace("dw", wblob.diff.shape)
                xp.matmul(a, b, out=grad)
                wblob.diff += grad
            self.finish_param_grad(0)
        if self.bias_term and self.param_needs_grad(1):
            self.add_param_grad(1, dy.sum(axis=0))
            self.finish_param_grad(1)
        if propagate_down[0]:
            w = self.blobs[0].data
            if self.transpose:
                dx = xp.ascontiguousarray((w @ xp.ascontiguousarray(dy.T)).T)
            else:
                dx = dy @ w
            bottoms[0].diff = dx.reshape(bottoms[0].shape)


@register("Split")
class SplitLayer(Layer):
    """Tops share the bottom's data; the bottom's gradient is the sum of the tops'."""

    min_bottoms = max_bottoms = 1
    min_tops = 1

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        for t in tops:
            t.reshape(bottoms[0].shape)
            t.share_data(bottoms[0])

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        for t in tops:
            t.share_data(bottoms[0])

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if not propagate_down[0]:
            return
        total = tops[0].diff.copy()
        for t in tops[1:]:
            total += t.diff
        bottoms[0].diff = total


@register("Silence")
class SilenceLayer(Layer):
    """Consumes blobs so they are not net outputs; gradients are zero."""

    min_bottoms = 1
    max_tops = 0

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        pass

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        pass

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        for b, down in zip(bottoms, propagate_down):
            if down:
                b.diff = self.xp.zeros(b.shape, dtype=self.dtype)


@register("Flatten")
class FlattenLayer(Layer):
    """Collapse axes [axis, end_axis] into one; the top views the bottom's data."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.flatten_param
        shape = bottoms[0].shape
        a = canonical_axis(p.axis, len(shape), self.name)
        e = canonical_axis(p.end_axis, len(shape), self.name)
        if e < a:
            raise self.error(f"end_axis {p.end_axis} comes before axis {p.axis}")
        new = shape[:a] + (int(np.prod(shape[a:e + 1], dtype=np.int64)),) + shape[e + 1:]
        tops[0].reshape(new)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        tops[0].data = bottoms[0].data.reshape(tops[0].shape)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            bottoms[0].diff = tops[0].diff.reshape(bottoms[0].shape)


@register("Reshape")
class ReshapeLayer(Layer):
    """Caffe's Reshape: 0 copies a bottom dim, -1 is inferred; axis/num_axes select a range."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.reshape_param
        shape = bottoms[0].shape
        dims = [int(d) for d in p.shape.dim]
        start = p.axis + len(shape) + 1 if p.axis < 0 else p.axis
        if not 0 <= start <= len(shape):
            raise self.error(f"axis {p.axis} is out of range for shape {shape}")
        end = len(shape) if p.num_axes == -1 else start + p.num_axes
        if p.num_axes < -1 or end > len(shape):
            raise self.error(f"num_axes {p.num_axes} is out of range for shape {shape}")
        out: list[int] = []
        infer = -1
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= len(shape):
                    raise self.error(f"dim {i} is 0 (copy) but the bottom has no axis {start + i}")
                out.append(shape[start + i])
            elif d == -1:
                if infer >= 0:
                    raise self.error("only one dimension may be -1")
                infer = i
                out.append(1)
            elif d < -1:
                raise self.error(f"dimension {d} is invalid")
            else:
                out.append(d)
        new = list(shape[:start]) + out + list(shape[end:])
        count = int(np.prod(shape, dtype=np.int64))
        known = int(np.prod(new, dtype=np.int64))
        if infer >= 0:
            if known == 0 or count % known:
                raise self.error(f"cannot infer -1: {count} values do not fit {new}")
            new[start + infer] = count // known
        if int(np.prod(new, dtype=np.int64)) != count:
            raise self.error(f"reshape of {shape} to {tuple(new)} changes the number of values")
        tops[0].reshape(tuple(new))

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        tops[0].data = bottoms[0].data.reshape(tops[0].shape)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            bottoms[0].diff = tops[0].diff.reshape(bottoms[0].shape)


@register("Concat")
class ConcatLayer(Layer):
    min_bottoms = 1
    min_tops = max_tops = 1

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.concat_param
        first = bottoms[0].shape
        if p.HasField("concat_dim") and not p.HasField("axis"):
            axis = int(p.concat_dim)
        else:
            axis = int(p.axis)
        self.axis = canonical_axis(axis, len(first), self.name)
        total = 0
        for b in bottoms:
            s = b.shape
            if len(s) != len(first) or s[:self.axis] != first[:self.axis] or s[self.axis + 1:] != first[self.axis + 1:]:
                raise self.error(f"bottom {b.name} has shape {s}; all bottoms must match {first} "
                                 f"except on axis {self.axis}")
            total += s[self.axis]
        tops[0].reshape(first[:self.axis] + (total,) + first[self.axis + 1:])

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        if len(bottoms) == 1:
            tops[0].share_data(bottoms[0])
            return
        tops[0].data = self.xp.concatenate([b.data for b in bottoms], axis=self.axis)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        dy = tops[0].diff
        offset = 0
        for b, down in zip(bottoms, propagate_down):
            size = b.shape[self.axis]
            if down:
                index: list[Any] = [slice(None)] * dy.ndim
                index[self.axis] = slice(offset, offset + size)
                bottoms_diff = dy[tuple(index)]
                b.diff = self.xp.ascontiguousarray(bottoms_diff)
            offset += size


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


@register("Slice")
class SliceLayer(Layer):
    """Split a bottom along ``axis`` at ``slice_point``s (or into equal parts); tops are copies."""

    min_bottoms = max_bottoms = 1
    min_tops = 1

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.slice_param
        shape = bottoms[0].shape
        axis = int(p.slice_dim) if p.HasField("slice_dim") and not p.HasField("axis") else int(p.axis)
        self.axis = canonical_axis(axis, len(shape), self.name)
        size = shape[self.axis]
        if p.slice_point:
            points = [int(v) for v in p.slice_point]
            if len(points) != len(tops) - 1 or points != sorted(set(points)) or points[0] <= 0 or points[-1] >= size:
                raise self.error(f"slice_point {points} must be {len(tops) - 1} increasing values inside 1..{size - 1}")
            bounds = [0] + points + [size]
        else:
            if size % len(tops):
                raise self.error(f"axis {self.axis} of size {size} does not split evenly into {len(tops)} tops")
            step = size // len(tops)
            bounds = [k * step for k in range(len(tops) + 1)]
        self.bounds = bounds
        for k, t in enumerate(tops):
            t.reshape(shape[:self.axis] + (bounds[k + 1] - bounds[k],) + shape[self.axis + 1:])

    def _index(self, ndim: int, lo: int, hi: int) -> tuple:
        index: list[Any] = [slice(None)] * ndim
        index[self.axis] = slice(lo, hi)
        return tuple(index)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = bottoms[0].data
        for k, t in enumerate(tops):
            t.data = self.xp.ascontiguousarray(x[self._index(x.ndim, self.bounds[k], self.bounds[k + 1])])

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            bottoms[0].diff = self.xp.concatenate([t.diff for t in tops], axis=self.axis)


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
