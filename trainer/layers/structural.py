"""Structural layers: Split, Silence, Flatten, Reshape, Concat, Slice.

They move data and no arithmetic happens: a top is the bottom itself (Split, shared
data), a view of it (Flatten, Reshape), a join of several bottoms (Concat) or a piece
of one (Slice); Silence consumes blobs so they are not net outputs. Backward routes
gradients the same way (Split sums its tops' gradients, as Caffe's SplitLayer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import register
from .base import Blob, Layer, canonical_axis


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
