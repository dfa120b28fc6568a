"""Softmax, SoftmaxWithLoss, Accuracy and EuclideanLoss, with Caffe's normalization and tie rules."""

from __future__ import annotations

from typing import Any

import numpy as np

from datakit.formats import caffe_pb2

from . import register
from .base import Blob, Layer, canonical_axis

FLT_MIN = float(np.finfo(np.float32).tiny)
_N = caffe_pb2.LossParameter


def softmax(xp: Any, x: Any, axis: int) -> Any:
    """Numerically stable softmax along ``axis`` (subtract the max first, as Caffe)."""
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def _outer_inner(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, shape[axis], inner


@register("Softmax")
class SoftmaxLayer(Layer):
    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self.axis = canonical_axis(self.param.softmax_param.axis, len(bottoms[0].shape), self.name)
        tops[0].reshape(bottoms[0].shape)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        tops[0].data = softmax(self.xp, bottoms[0].data, self.axis)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            y, dy = tops[0].data, tops[0].diff
            bottoms[0].diff = (dy - (dy * y).sum(axis=self.axis, keepdims=True)) * y


def normalizer(param: caffe_pb2.LayerParameter, outer: int, inner: int, valid: int) -> float:
    """Caffe's LossLayer::GetNormalizer (legacy ``normalize`` overrides, floor of 1)."""
    lp = param.loss_param
    mode = lp.normalization
    if lp.HasField("normalize") and not lp.HasField("normalization"):  # normalization wins, as in Caffe
        mode = _N.VALID if lp.normalize else _N.BATCH_SIZE
    if mode == _N.FULL:
        value = outer * inner
    elif mode == _N.VALID:
        value = valid if lp.HasField("ignore_label") else outer * inner
    elif mode == _N.BATCH_SIZE:
        value = outer
    else:
        value = 1
    return float(max(1, value))


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(Layer):
    """loss = -Σ log(max(p[label], FLT_MIN)) / normalizer; ignore_label positions skipped."""

    min_bottoms = max_bottoms = 2
    min_tops = 1
    max_tops = 2
    is_loss = True
    label_bottom = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        lp = self.param.loss_param
        self.ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        self._prob: Any = None

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        shape = bottoms[0].shape
        self.axis = canonical_axis(self.param.softmax_param.axis, len(shape), self.name)
        self.outer, self.channels, self.inner = _outer_inner(shape, self.axis)
        if bottoms[1].count != self.outer * self.inner:
            raise self.error(f"label blob {bottoms[1].name} has {bottoms[1].count} values; "
                             f"expected {self.outer * self.inner} (one per prediction, shape {shape})")
        tops[0].reshape(())
        if len(tops) == 2:
            tops[1].reshape(shape)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp = self.xp
        prob = softmax(xp, bottoms[0].data, self.axis)
        self._prob = prob
        p3 = prob.reshape(self.outer, self.channels, self.inner)
        labels = bottoms[1].data.reshape(self.outer, self.inner).astype(np.int64)
        valid = xp.ones(labels.shape, dtype=bool) if self.ignore is None else labels != self.ignore
        safe = xp.where(valid, labels, 0)
        if bool(((safe < 0) | (safe >= self.channels)).any()):
            bad = int(xp.asarray(safe[(safe < 0) | (safe >= self.channels)]).ravel()[0])
            raise self.error(f"label {bad} is out of range: the net predicts {self.channels} classes "
                             f"(labels 0..{self.channels - 1})")
        picked = xp.take_along_axis(p3, safe[:, None, :], axis=1)[:, 0, :]
        logp = xp.log(xp.maximum(picked, FLT_MIN))
        self._valid = valid
        self._safe = safe
        count = int(valid.sum())
        self._norm = normalizer(self.param, self.outer, self.inner, count)
        loss = -(logp * valid).sum() / self._norm
        tops[0].data = xp.asarray(loss, dtype=self.dtype).reshape(())
        if len(tops) == 2:
            tops[1].data = prob

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if not propagate_down[0]:
            return
        xp = self.xp
        g = self._prob.reshape(self.outer, self.channels, self.inner).copy()
        # p - onehot(label): a comparison mask works the same on NumPy and CuPy.
        g -= xp.arange(self.channels).reshape(1, -1, 1) == self._safe[:, None, :]
        g *= self._valid[:, None, :]
        weight = tops[0].diff.reshape(-1)[0]
        g *= weight / self._norm
        bottoms[0].diff = g.reshape(bottoms[0].shape)


@register("Accuracy")
class AccuracyLayer(Layer):
    """A sample counts when fewer than top_k classes score >= its label's score (ties count against)."""

    min_bottoms = max_bottoms = 2
    min_tops = 1
    max_tops = 2
    label_bottom = 1

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        ap = self.param.accuracy_param
        self.top_k = int(ap.top_k)
        self.ignore = int(ap.ignore_label) if ap.HasField("ignore_label") else None

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        shape = bottoms[0].shape
        self.axis = canonical_axis(self.param.accuracy_param.axis, len(shape), self.name)
        self.outer, self.channels, self.inner = _outer_inner(shape, self.axis)
        if self.top_k > self.channels:
            raise self.error(f"top_k {self.top_k} exceeds the number of classes {self.channels}")
        if bottoms[1].count != self.outer * self.inner:
            raise self.error(f"label blob {bottoms[1].name} has {bottoms[1].count} values; "
                             f"expected {self.outer * self.inner}")
        tops[0].reshape(())
        if len(tops) == 2:
            tops[1].reshape((self.channels,))

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp = self.xp
        scores = bottoms[0].data.reshape(self.outer, self.channels, self.inner)
        labels = bottoms[1].data.reshape(self.outer, self.inner).astype(np.int64)
        valid = xp.ones(labels.shape, dtype=bool) if self.ignore is None else labels != self.ignore
        safe = xp.where(valid, labels, 0)
        if bool(((safe < 0) | (safe >= self.channels)).any()):
            raise self.error(f"a label is outside 0..{self.channels - 1}")
        true_score = xp.take_along_axis(scores, safe[:, None, :], axis=1)
        # The label's own class is among those >= itself, hence "- 1".
        better = (scores >= true_score).sum(axis=1) - 1
        correct = (better < self.top_k) & valid
        count = int(valid.sum())
        acc = float(correct.sum()) / count if count else 0.0
        tops[0].data = xp.asarray(acc, dtype=self.dtype).reshape(())
        if len(tops) == 2:
            per = xp.zeros(self.channels, dtype=self.dtype)
            for c in range(self.channels):
                mask = valid & (labels == c)
                n = int(mask.sum())
                per[c] = float((correct & mask).sum()) / n if n else 0.0
            tops[1].data = per


@register("EuclideanLoss")
class EuclideanLossLayer(Layer):
    """loss = Σ (a − b)² / (2N), N the batch size (Caffe's EuclideanLoss)."""

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1
    is_loss = True

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        if bottoms[0].count != bottoms[1].count:
            raise self.error(f"bottoms have {bottoms[0].count} and {bottoms[1].count} values; they must match")
        tops[0].reshape(())

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self._diff = bottoms[0].data - bottoms[1].data.reshape(bottoms[0].shape)
        n = bottoms[0].shape[0] if bottoms[0].shape else 1
        tops[0].data = self.xp.asarray((self._diff * self._diff).sum() / (2.0 * n), dtype=self.dtype).reshape(())

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        n = bottoms[0].shape[0] if bottoms[0].shape else 1
        weight = tops[0].diff.reshape(-1)[0]
        for k, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[k]:
                bottoms[k].diff = (self._diff * (sign * weight / n)).reshape(bottoms[k].shape)
