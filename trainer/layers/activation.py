"""Elementwise layers: ReLU, Sigmoid, TanH, Dropout, AbsVal, Power, ELU, PReLU (all may run in place)."""

from __future__ import annotations

from typing import Any

import numpy as np

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
        self._device_rng: Any = None  # cupy.random.RandomState, made on the first GPU forward

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = bottoms[0].data
        if self.phase == caffe_pb2.TRAIN:
            xp = self.xp
            u: Any  # uniform draws, an xp array (numpy's on the host, cupy's on a GPU)
            if xp.__name__ == "numpy":
                # float64 when the net's dtype is not a float one (numpy's default, as dtype=None gives)
                u = self.rng.random(x.shape, dtype=self.dtype if self.dtype.kind == "f" else np.float64)
            else:
                # The net's host generator (seeded by random_seed, saved with snapshots) picks the seed
                # of every device mask, so GPU runs repeat and resume exactly; the mask is drawn on the
                # device (drawing it on the host and copying it would cost more than the layer).
                if self._device_rng is None:
                    self._device_rng = xp.random.RandomState()
                self._device_rng.seed(int(self.rng.integers(1 << 63)))
                u = self._device_rng.random_sample(x.shape, dtype=self.dtype)
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


@register("AbsVal")
class AbsValLayer(_Elementwise):
    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        if tops[0] is bottoms[0]:
            raise self.error("AbsVal cannot run in place (its gradient needs the input's sign)")
        tops[0].data = self.xp.abs(bottoms[0].data)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            bottoms[0].diff = tops[0].diff * self.xp.sign(bottoms[0].data)


@register("Power")
class PowerLayer(_Elementwise):
    """y = (shift + scale·x)^power."""

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        self._x: Any = None

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = bottoms[0].data
        self._x = x.copy() if tops[0] is bottoms[0] and self.need_backward else x
        base = self.shift + self.scale * x
        tops[0].data = base if self.power == 1.0 else base ** self.power

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if not propagate_down[0]:
            return
        dy = tops[0].diff
        if self.power == 0.0 or self.scale == 0.0:
            bottoms[0].diff = dy * 0
        elif self.power == 1.0:
            bottoms[0].diff = dy * self.scale
        else:
            base = self.shift + self.scale * self._x
            bottoms[0].diff = dy * (self.power * self.scale) * base ** (self.power - 1.0)


@register("ELU")
class ELULayer(_Elementwise):
    """y = x for x > 0, alpha·(e^x − 1) otherwise; backward reads y, so in place works."""

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self.alpha = float(self.param.elu_param.alpha)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = bottoms[0].data
        tops[0].data = self.xp.where(x > 0, x, self.alpha * (self.xp.exp(self.xp.minimum(x, 0)) - 1))

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            y, dy = tops[0].data, tops[0].diff
            # x > 0 exactly where y > 0 (alpha >= 0), as Caffe's in-place test of the bottom.
            bottoms[0].diff = self.xp.where(y > 0, dy, dy * (y + self.alpha))


@register("PReLU")
class PReLULayer(_Elementwise):
    """y = max(0, x) + a·min(0, x) with learned slopes a per channel (or one shared)."""

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        from .learnable import make_param_blob  # noqa: PLC0415

        p = self.param.prelu_param
        shape = bottoms[0].shape
        if len(shape) < 2 and not p.channel_shared:
            raise self.error(f"needs a channel axis (bottom {shape}) unless channel_shared")
        self.shared = bool(p.channel_shared)
        n = 1 if self.shared else shape[1]
        filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=0.25)
        self.blobs = [make_param_blob(self, 0, (n,), filler)]
        self._x: Any = None

    def _a(self, ndim: int) -> Any:
        a = self.blobs[0].data
        return a.reshape((1, -1) + (1,) * (ndim - 2)) if not self.shared else a.reshape(())

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        x = bottoms[0].data
        self._x = x.copy() if tops[0] is bottoms[0] and self.need_backward else x
        tops[0].data = self.xp.where(x > 0, x, x * self._a(x.ndim))

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        x, dy = self._x, tops[0].diff
        neg = x <= 0
        if self.param_needs_grad(0):
            g = dy * x * neg
            grad = g.sum() if self.shared else g.sum(axis=(0,) + tuple(range(2, x.ndim)))
            self.add_param_grad(0, self.xp.asarray(grad).reshape(self.blobs[0].shape))
            self.finish_param_grad(0)
        if propagate_down[0]:
            bottoms[0].diff = self.xp.where(neg, dy * self._a(x.ndim), dy)
