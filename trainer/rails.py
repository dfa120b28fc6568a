"""Safety rails from the fine-tuning folklore: wrong labels, diverging loss, unshuffled data.

Caffe trains happily on labels >= num_output (the loss never converges) and
prints ``loss = 87.3365`` (-log(FLT_MIN)) when the softmax underflows; both are
classic lost afternoons. Here a bad label stops training with the record and the
classifier named, and a non-finite loss stops it with the first layer whose
output went non-finite and what to try.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np

from datakit.errors import DatakitError


class TrainingError(DatakitError):
    """Training cannot go on: bad labels, a diverging loss."""


class LabelError(TrainingError):
    """A label outside 0..num_output-1."""


class DivergedError(TrainingError):
    """The loss became NaN or infinite."""


@dataclass
class LabelLimit:
    classes: int
    classifier: str
    classifier_type: str
    consumer: str
    ignore_label: int | None


def _producer(net, blob: str, before: int) -> int | None:
    """Index of the layer that last wrote ``blob`` before layer ``before`` (through Splits, in-place)."""
    for i in range(before - 1, -1, -1):
        if blob in net.top_names[i]:
            layer = net.layers[i]
            if layer.type == "Split":
                return _producer(net, net.bottom_names[i][0], i)
            if blob in net.bottom_names[i]:  # in-place (ReLU, Dropout): keep looking for the producer
                continue
            return i
    return None


def label_limits(net) -> dict[str, list[LabelLimit]]:
    """{data layer name: limits} for every label blob that feeds a classifier loss/accuracy.

    The consumers are the layers that declare ``label_bottom`` (its scores are bottom 0).
    """
    limits: dict[str, list[LabelLimit]] = {}
    for i, layer in enumerate(net.layers):
        j = layer.label_bottom
        if j is None or len(net.bottom_names[i]) <= j:
            continue
        label_src = _producer(net, net.bottom_names[i][j], i)
        score_src = _producer(net, net.bottom_names[i][0], i)
        if label_src is None or score_src is None or not net.layers[label_src].is_data:
            continue
        scores = net.bottom_vecs[i][0]
        if scores.num_axes < 2:
            continue
        lp = layer.param
        ignore = lp.loss_param.ignore_label if lp.loss_param.HasField("ignore_label") else None
        if layer.type == "Accuracy" and lp.accuracy_param.HasField("ignore_label"):
            ignore = lp.accuracy_param.ignore_label
        axis = lp.softmax_param.axis if lp.HasField("softmax_param") else 1
        classes = scores.shape[axis]
        src = net.layers[score_src]
        limits.setdefault(net.layers[label_src].name, []).append(
            LabelLimit(classes, src.name, src.type, layer.name, ignore))
    return limits


def make_label_check(data_layer, limits: list[LabelLimit]) -> Callable[[np.ndarray, list[str]], None]:
    """The callback a data layer runs on each batch's host labels before the net sees them."""
    def check(labels: np.ndarray, keys: list[str]) -> None:
        for lim in limits:
            bad = (labels < 0) | (labels >= lim.classes)
            if lim.ignore_label is not None:
                bad &= labels != lim.ignore_label
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                source = data_layer.source_name
                where = f"{source}: " if source else ""
                raise LabelError(
                    f"{where}record {keys[j]!r} has label {int(labels[j])} but layer {lim.classifier} "
                    f"({lim.classifier_type}) feeding {lim.consumer} has num_output {lim.classes} "
                    f"(labels must be 0..{lim.classes - 1}); fix the labels in the list/database or raise "
                    f"{lim.classifier}'s num_output (Caffe would train on silently and never converge)")
    return check


def install(net, warn: Callable[[str], None] | None = None) -> dict[str, list[LabelLimit]]:
    """Attach label checks (and the warning sink) to every data layer of ``net``."""
    limits = label_limits(net)
    for layer in net.layers:
        if layer.is_data:
            if warn is not None:
                layer.warn = warn
            if layer.name in limits:
                layer.label_check = make_label_check(layer, limits[layer.name])
    return limits


def longest_label_run(labels: list[int]) -> tuple[int, int, int]:
    """(length, label, first position) of the longest run of equal consecutive labels."""
    best = (0, -1, 0)
    run_start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[run_start]:
            length = i - run_start
            if length > best[0]:
                best = (length, labels[run_start], run_start)
            run_start = i
    return best


def first_non_finite_layer(net) -> tuple[str, str, str] | None:
    """(layer name, type, top) of the first layer, in forward order, whose top holds NaN/inf."""
    xp = net.xp
    for i, layer in enumerate(net.layers):
        for name, blob in zip(net.top_names[i], net.top_vecs[i]):
            if blob.count and not bool(xp.isfinite(blob.data).all()):
                return layer.name, layer.type, name
    return None


def check_loss(net, loss: float, it: int, base_lr: float) -> None:
    """Stop with a clear error when the loss is NaN or infinite."""
    if math.isfinite(loss):
        return
    culprit = first_non_finite_layer(net)
    where = (f"layer {culprit[0]} ({culprit[1]}) is the first to output non-finite values (top {culprit[2]!r})"
             if culprit else "no layer output is non-finite now (the weights may have diverged)")
    raise DivergedError(
        f"iteration {it}: loss is {loss}; {where}. The learning rate is probably too high: lower base_lr "
        f"(now {base_lr:g}) by 10x, or check the data scale/mean (Caffe would print loss = 87.3365, "
        f"-log(FLT_MIN), and keep going)")


def near_flt_min_loss(loss: float) -> bool:
    """True for Caffe's tell-tale 87.3365 (p[label] underflowed to FLT_MIN)."""
    return abs(loss - 87.3365) < 1e-3


#: iterations in a row at 87.3365 before training stops (a real loss never sits exactly there)
FLT_MIN_PATIENCE = 3


def check_flt_min_streak(streak: int, it: int, base_lr: float) -> None:
    """Stop when the loss has been -log(FLT_MIN) for FLT_MIN_PATIENCE iterations in a row."""
    if streak >= FLT_MIN_PATIENCE:
        raise DivergedError(
            f"iteration {it}: loss has been 87.3365 (= -log(FLT_MIN)) for {streak} iterations: the softmax "
            f"probability of the true class underflowed for every sample, i.e. the weights diverged. Lower "
            f"base_lr (now {base_lr:g}) by 10x, or check the data scale/mean and the labels")



def _times(k: int) -> str:
    return {1: "once", 2: "twice"}.get(k, f"{k} times")


def test_pass_overruns(net, batches: int, setting: str, where: str = "", passes: bool = False) -> list[str]:
    """A warning for each data layer of ``net`` that `batches` batches would read past its last record.

    A test of test_iter x batch_size images over a smaller test set wraps around (as in
    Caffe), so some records are scored once more than others: the accuracy is not the
    test set's. In ``trainer fit`` (`passes`) the next test starts where this one
    stopped, so each weighs a different mix and two tests do not even score the same
    thing. Caffe says nothing; a newcomer's first dataset of a few hundred images meets
    it at once. `setting` names the knob ("test_iter", "--iterations"), `where` prefixes
    the line ("test net #0: ").
    """
    warnings = []
    for layer in net.layers:
        n, size = getattr(layer, "num_records", 0), getattr(layer, "batch_size", 0)
        if not layer.is_data or getattr(layer, "source", None) is None or n <= 0 or size <= 0:
            continue  # MemoryData (records handed over later) has no source to compare with
        images = batches * size
        if images <= n:
            continue
        times, extra = divmod(images, n)
        scored = (f"every record {_times(times)}" if not extra else
                  f"{extra} records {_times(times + 1)} and the other {n - extra} {_times(times)}"
                  + (", a different mix each test" if passes else ""))
        fits = f"{setting} {n // size}" if n >= size else f"batch_size {n} and {setting} 1"
        warnings.append(f"{where}{setting} {batches} x batch_size {size} = {images} images, but layer "
                        f"{layer.name} reads {layer.source_name}, {n} records: a test scores {scored}; "
                        f"to score each record once at most, use {fits}")
    return warnings
