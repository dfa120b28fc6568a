"""Elementwise activations: ReLU, Sigmoid, TanH, Dropout (all may run in place)."""

from __future__ import annotations

from typing import Any

from datakit.formats import caffe_pb2

from . import register
from .base import Blob, Layer


class _Elementwise(Layer):
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        tops[0].reshape(bottoms[0].shape)


@register("ReLU")
class ReLULayer(_Elementwise):
    """y = x for x > 0, negative_slope·x otherwise; backward reads y (valid in place)."""

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self.slope = float(self.param.relu_param.negative_slope)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp, x = self.xp, bottoms[0].data
        if self.slope == 0.0:
            if tops[0] is bottoms[0]:
                xp.maximum(x, 0, out=x)
            else:
                tops[0].data = xp.maximum(x, 0)
        else:
            y = xp.where(x > 0, x, x * self.slope)
            if tops[0] is bottoms[0]:
                x[...] = y
            else:
                tops[0].data = y

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if not propagate_down[0]:
            return
        # Caffe tests bottom_data > 0; in place that is the top data, and
        # y > 0 exactly where x > 0 for any slope >= 0.
        x, dy = bottoms[0].data, tops[0].diff
        if self.slope == 0.0:
            bottoms[0].diff = dy * (x > 0)
        else:
            bottoms[0].diff = self.xp.where(x > 0, dy, dy * self.slope)


@register("Sigmoid")
class SigmoidLayer(_Elementwise):
    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = bottoms[0].data
        # 0.5·tanh(0.5x)+0.5 equals 1/(1+e^-x) and never overflows.
        tops[0].data = 0.5 * self.xp.tanh(0.5 * x) + 0.5

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            y = tops[0].data
            bottoms[0].diff = tops[0].diff * y * (1.0 - y)


@register("TanH")
class TanHLayer(_Elementwise):
    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        tops[0].data = self.xp.tanh(bottoms[0].data)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            y = tops[0].data
            bottoms[0].diff = tops[0].diff * (1.0 - y * y)


@register("Dropout")
class DropoutLayer(_Elementwise):
    """TRAIN: y = x·mask/(1-ratio), mask ~ Bernoulli(1-ratio); TEST: identity."""

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)
        self._mask: Any = None

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = bottoms[0].data
        if self.phase == caffe_pb2.TRAIN:
            xp = self.xp
            if xp.__name__ == "numpy":
                u = self.rng.random(x.shape, dtype=self.dtype if self.dtype.kind == "f" else None)
            else:
                u = xp.random.random_sample(x.shape, dtype=self.dtype)
            self._mask = (u >= self.ratio).astype(self.dtype) * self.dtype.type(self.scale)
            tops[0].data = x * self._mask
        elif tops[0] is not bottoms[0]:
            tops[0].share_data(bottoms[0])

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if not propagate_down[0]:
            return
        if self.phase == caffe_pb2.TRAIN:
            bottoms[0].diff = tops[0].diff * self._mask
        else:
            bottoms[0].diff = tops[0].diff
