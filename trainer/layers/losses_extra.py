"""The rest of Caffe's losses: HingeLoss, SigmoidCrossEntropyLoss, InfogainLoss,
MultinomialLogisticLoss and ContrastiveLoss, each as Caffe's src/caffe/layers computes it.

Normalisation follows Caffe per layer: SigmoidCrossEntropyLoss and InfogainLoss read
``loss_param`` (``normalization``, legacy ``normalize``, ``ignore_label``); the others
divide by the batch size N (the first axis), as Caffe's do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datakit.errors import FormatError
from datakit.formats import caffe_pb2
from datakit.formats.blobproto import read_binaryproto

from . import register
from .base import Blob, Layer, canonical_axis
from .loss import normalizer, softmax

LOG_THRESHOLD = 1e-20  # Caffe's kLOG_THRESHOLD (loss_layer.hpp)
_N = caffe_pb2.LossParameter


class _Loss(Layer):
    """Scalar top; the gradient is scaled by the top's diff (the loss weight) over the normaliser."""

    min_tops = max_tops = 1
    is_loss = True

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self.num = bottoms[0].shape[0] if bottoms[0].shape else 1
        tops[0].reshape(())

    def put_loss(self, tops: list[Blob], value: Any) -> None:
        tops[0].data = self.xp.asarray(value, dtype=self.dtype).reshape(())

    def weight(self, tops: list[Blob]) -> Any:
        return tops[0].diff.reshape(-1)[0]

    def labels(self, blob: Blob, n: int, classes: int, ignore: int | None = None) -> Any:
        """Bottom ``blob`` as int64 class indices, all in 0..classes-1 (or ``ignore``)."""
        if blob.count != n:
            raise self.error(f"label blob {blob.name} has {blob.count} values; expected {n}")
        labels = blob.data.reshape(-1).astype(np.int64)
        bad = (labels < 0) | (labels >= classes)
        if ignore is not None:
            bad &= labels != ignore
        if bool(bad.any()):
            value = int(labels[self.xp.flatnonzero(bad)[0]])
            raise self.error(f"label {value} is out of range: the bottom has {classes} classes "
                             f"(labels 0..{classes - 1})")
        return labels


@register("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(_Loss):
    """loss = −Σ log(max(p[label], 1e-20)) / N over probabilities p (N × C)."""

    min_bottoms = max_bottoms = 2
    label_bottom = 1

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = bottoms[0].data.reshape(self.num, -1)
        self._label = self.labels(bottoms[1], self.num, p.shape[1])
        self._picked = self.xp.maximum(self.xp.take_along_axis(p, self._label[:, None], axis=1), LOG_THRESHOLD)
        self.put_loss(tops, -self.xp.log(self._picked).sum() / self.num)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            xp = self.xp
            c = bottoms[0].count // self.num
            onehot = xp.arange(c)[None, :] == self._label[:, None]
            g = onehot * (-self.weight(tops) / self.num) / self._picked
            bottoms[0].diff = g.astype(self.dtype).reshape(bottoms[0].shape)


@register("HingeLoss")
class HingeLossLayer(_Loss):
    """One-vs-all hinge: t = −1 for the label's class, +1 otherwise; loss = Σ max(0, 1 + t·x)^p / N.

    ``norm`` L1 (p = 1, the default) or L2 (p = 2).
    """

    min_bottoms = max_bottoms = 2
    label_bottom = 1

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp = self.xp
        x = bottoms[0].data.reshape(self.num, -1)
        label = self.labels(bottoms[1], self.num, x.shape[1])
        self._sign = xp.where(xp.arange(x.shape[1])[None, :] == label[:, None], -1.0, 1.0).astype(self.dtype)
        self._margin = xp.maximum(0, 1 + self._sign * x)
        self.l2 = self.param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2
        total = (self._margin * self._margin).sum() if self.l2 else self._margin.sum()
        self.put_loss(tops, total / self.num)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            scale = self.weight(tops) / self.num
            g = 2 * self._margin if self.l2 else (self._margin > 0).astype(self.dtype)
            bottoms[0].diff = (g * self._sign * scale).reshape(bottoms[0].shape)


def loss_normalization(param: caffe_pb2.LayerParameter, default: int) -> caffe_pb2.LayerParameter:
    """``param`` with Caffe's normalisation choice made explicit for ``normalizer``.

    ``normalization`` when given, else the legacy ``normalize`` (VALID or BATCH_SIZE),
    else the layer's own ``default``.
    """
    lp = param.loss_param
    out = caffe_pb2.LayerParameter()
    out.loss_param.CopyFrom(lp)
    if not lp.HasField("normalization"):
        mode = (_N.VALID if lp.normalize else _N.BATCH_SIZE) if lp.HasField("normalize") else default
        out.loss_param.normalization = mode
    out.loss_param.ClearField("normalize")
    return out


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(_Loss):
    """loss = −Σ [t·log σ(x) + (1 − t)·log(1 − σ(x))] / normaliser, computed without overflow.

    Targets t have x's count; ``ignore_label`` targets are skipped. Caffe's default
    normalisation here is BATCH_SIZE (N); ``normalization`` / ``normalize`` change it.
    """

    min_bottoms = max_bottoms = 2

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self.norm_param = loss_normalization(self.param, _N.BATCH_SIZE)
        lp = self.param.loss_param
        self.ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        super().reshape(bottoms, tops)
        if bottoms[0].count != bottoms[1].count:
            raise self.error(f"targets have {bottoms[1].count} values, the scores {bottoms[0].count}; "
                             "they must match")

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp = self.xp
        x = bottoms[0].data
        t = bottoms[1].data.reshape(x.shape)
        self._valid = xp.ones(x.shape, dtype=bool) if self.ignore is None else t != self.ignore
        pos = (x >= 0).astype(self.dtype)
        per = x * (t - pos) - xp.log1p(xp.exp(x - 2 * x * pos))
        count = int(self._valid.sum())
        self._norm = normalizer(self.norm_param, self.num, x.size // max(self.num, 1), count)
        self.put_loss(tops, -(per * self._valid).sum() / self._norm)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            x = bottoms[0].data
            sig = 0.5 * self.xp.tanh(0.5 * x) + 0.5
            g = (sig - bottoms[1].data.reshape(x.shape)) * self._valid
            bottoms[0].diff = g * (self.weight(tops) / self._norm)


@register("InfogainLoss")
class InfogainLossLayer(_Loss):
    """loss = −Σᵢ Σₗ H[labelᵢ, l]·log(max(pᵢₗ, 1e-20)) / normaliser, p = softmax(x) along ``axis``.

    As Caffe since its 2017 rewrite (the one with ``infogain_loss_param.axis``): bottom 0
    holds scores, not probabilities; H (C × C) comes from the third bottom or from the
    BlobProto file ``source``; ``ignore_label`` and ``normalization`` (default VALID) apply;
    an optional second top is the softmax. With H the identity it is SoftmaxWithLoss.
    """

    min_bottoms = 2
    max_bottoms = 3
    max_tops = 2
    label_bottom = 1

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self.norm_param = loss_normalization(self.param, _N.VALID)
        lp = self.param.loss_param
        self.ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        self._h: Any = None
        if len(bottoms) < 3:
            source = self.param.infogain_loss_param.source
            if not source:
                raise self.error("needs infogain_loss_param.source (a .binaryproto matrix) or a third bottom")
            path = Path(self.base_dir) / source
            try:
                h = read_binaryproto(path)
            except FormatError as err:
                raise self.error(f"infogain matrix: {err}") from None
            self._h = self.xp.asarray(np.asarray(h, dtype=self.dtype))

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        shape = bottoms[0].shape
        self.axis = canonical_axis(self.param.infogain_loss_param.axis, len(shape), self.name)
        self.outer = int(np.prod(shape[:self.axis], dtype=np.int64))
        self.channels = shape[self.axis]
        self.inner = int(np.prod(shape[self.axis + 1:], dtype=np.int64))
        h_count = bottoms[2].count if len(bottoms) == 3 else self._h.size
        if h_count != self.channels ** 2:
            raise self.error(f"the infogain matrix has {h_count} values; {self.channels} classes need "
                             f"{self.channels}x{self.channels}")
        tops[0].reshape(())
        if len(tops) == 2:
            tops[1].reshape(shape)

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp = self.xp
        h = (bottoms[2].data if len(bottoms) == 3 else self._h).reshape(self.channels, self.channels)
        prob = softmax(xp, bottoms[0].data, self.axis)
        p3 = prob.reshape(self.outer, self.channels, self.inner)
        labels = self.labels(bottoms[1], self.outer * self.inner, self.channels, self.ignore)
        labels = labels.reshape(self.outer, self.inner)
        self._valid = xp.ones(labels.shape, dtype=bool) if self.ignore is None else labels != self.ignore
        safe = xp.where(self._valid, labels, 0)
        rows = xp.transpose(xp.take(h, safe, axis=0), (0, 2, 1))  # (outer, C, inner): H[label, l]
        self._saved = (p3, rows, h)
        loss = -(rows * xp.log(xp.maximum(p3, LOG_THRESHOLD)) * self._valid[:, None, :]).sum()
        self._norm = normalizer(self.norm_param, self.outer, self.inner, int(self._valid.sum()))
        self.put_loss(tops, loss / self._norm)
        if len(tops) == 2:
            tops[1].data = prob

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        if propagate_down[0]:
            p3, rows, _ = self._saved
            g = (p3 * rows.sum(axis=1, keepdims=True) - rows) * self._valid[:, None, :]
            bottoms[0].diff = (g * (self.weight(tops) / self._norm)).reshape(bottoms[0].shape)


@register("ContrastiveLoss")
class ContrastiveLossLayer(_Loss):
    """Siamese loss over pairs (a, b) with similarity y (1 similar, 0 not), d = ‖a − b‖:

    loss = Σ [y·d² + (1 − y)·max(margin − d, 0)²] / 2N; ``legacy_version`` uses
    max(margin − d², 0) for dissimilar pairs. The dissimilar gradient divides by
    d + 1e-4, as Caffe's does (so it is exact only up to that 1e-4).
    """

    min_bottoms = max_bottoms = 3

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index < 2

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        xp = self.xp
        p = self.param.contrastive_loss_param
        self.margin, self.legacy = float(p.margin), bool(p.legacy_version)
        self._diff = (bottoms[0].data - bottoms[1].data).reshape(self.num, -1)
        self._d2 = (self._diff * self._diff).sum(axis=1)
        self._sim = bottoms[2].data.reshape(-1).astype(np.int64) != 0  # Caffe casts y to int
        if self.legacy:
            other = xp.maximum(self.margin - self._d2, 0)
        else:
            self._dist = xp.sqrt(self._d2)
            other = xp.maximum(self.margin - self._dist, 0) ** 2
        self.put_loss(tops, xp.where(self._sim, self._d2, other).sum() / (2.0 * self.num))

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        xp = self.xp
        alpha = self.weight(tops) / self.num
        if self.legacy:
            beta = xp.where(self.margin - self._d2 > 0, -alpha, 0.0)
        else:
            mdist = self.margin - self._dist
            beta = xp.where(mdist > 0, -alpha * mdist / (self._dist + 1e-4), 0.0)
        coeff = xp.where(self._sim, alpha, beta)[:, None]
        for k, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[k]:
                bottoms[k].diff = (self._diff * (coeff * sign)).astype(self.dtype).reshape(bottoms[k].shape)
