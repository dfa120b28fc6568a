"""More of Caffe's neuron layers: BNLL, Exp, Log, Threshold (element-wise, one bottom, one top)."""

from __future__ import annotations

import math
from typing import Any

from . import register
from .activation import _Elementwise
from .base import Blob

_BNLL_THRESHOLD = 50.0  # Caffe's kBNLL_THRESHOLD: exp() is clipped there in backward


def _base_log(base: float, layer: Any) -> float:
    """ln(base) for Exp/Log's ``base`` (-1 means e), checked as Caffe checks it."""
    if base == -1.0:
        return 1.0
    if base <= 0:
        raise layer.error(f"base must be strictly positive (or -1 for e), got {base}")
    return math.log(base)


def _keep_input(layer: Any, bottoms: list[Blob], tops: list[Blob]) -> Any:
    """The bottom values backward needs (copied when the layer runs in place)."""
    x = bottoms[0].data
    return x.copy() if tops[0] is bottoms[0] and layer.need_backward else x


@register("BNLL")
class BNLLLayer(_Elementwise):
    """y = log(1 + e^x), computed as x + log(1 + e^-x) for x > 0; dy/dx = sigmoid(x)."""

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp = self.xp
        x = self._x = _keep_input(self, bottoms, tops)
        tops[0].data = xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            e = self.xp.exp(self.xp.minimum(self._x, _BNLL_THRESHOLD))
            bottoms[0].diff = tops[0].diff * e / (e + 1.0)


@register("Exp")
class ExpLayer(_Elementwise):
    """y = base^(shift + scale·x) (base -1: e), as outer·e^(inner·x); backward reads y."""

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.exp_param
        log_base = _base_log(float(p.base), self)
        self.inner = log_base * float(p.scale)
        self.outer = 1.0 if p.shift == 0 else math.exp(log_base * float(p.shift))

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = bottoms[0].data
        y = self.xp.exp(x * self.inner) if self.inner != 1.0 else self.xp.exp(x)
        tops[0].data = y * self.outer if self.outer != 1.0 else y

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            bottoms[0].diff = tops[0].diff * tops[0].data * self.inner


@register("Log")
class LogLayer(_Elementwise):
    """y = log_base(shift + scale·x) (base -1: natural log)."""

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.log_param
        self.base_scale = 1.0 / _base_log(float(p.base), self)
        self.scale, self.shift = float(p.scale), float(p.shift)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = self._x = _keep_input(self, bottoms, tops)
        tops[0].data = self.xp.log(self.shift + self.scale * x) * self.base_scale

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            bottoms[0].diff = tops[0].diff * (self.scale * self.base_scale) / (self.shift + self.scale * self._x)


@register("Threshold")
class ThresholdLayer(_Elementwise):
    """y = 1 where x > threshold, else 0.

    Caffe has no backward for it (NOT_IMPLEMENTED); here the gradient is the step's
    derivative, zero everywhere it exists, so a net through it trains what lies above it.
    """

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self.threshold = float(self.param.threshold_param.threshold)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        tops[0].data = (bottoms[0].data > self.threshold).astype(self.dtype)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            bottoms[0].diff = self.xp.zeros(bottoms[0].shape, dtype=self.dtype)


@register("Clip")
class ClipLayer(_Elementwise):
    """y = min(max(x, min), max); the gradient passes where min <= x <= max (Caffe's Clip)."""

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise self.error("clip_param needs min and max")
        self.lo, self.hi = float(p.min), float(p.max)
        if self.lo > self.hi:
            raise self.error(f"clip_param min {self.lo} is above max {self.hi}")

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = self._x = _keep_input(self, bottoms, tops)
        tops[0].data = self.xp.minimum(self.xp.maximum(x, self.lo), self.hi)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            bottoms[0].diff = tops[0].diff * ((self._x >= self.lo) & (self._x <= self.hi))


@register("Swish")
class SwishLayer(_Elementwise):
    """y = x·sigmoid(beta·x); dy/dx = beta·y + sigmoid(beta·x)·(1 − beta·y)."""

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self.beta = float(self.param.swish_param.beta)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = bottoms[0].data
        self._sig = 0.5 * self.xp.tanh(0.5 * self.beta * x) + 0.5
        tops[0].data = x * self._sig

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            by = self.beta * tops[0].data
            bottoms[0].diff = tops[0].diff * (by + self._sig * (1 - by))
