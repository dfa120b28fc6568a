"""The losses of Caffe's catalogue: values from Caffe's formulas, normalisation modes, gradient checks."""

from __future__ import annotations


import numpy as np
import pytest

from datakit.errors import FormatError
from tests.test_layers import check_gradients, make_layer, rand, run_forward

# --------------------------------------------------------------- losses ----

LABELS = np.array([0.0, 2.0, 1.0, 2.0])


def _softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm):
    x = rand(4, 3)
    layer, b, t = make_layer(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}', [x, LABELS])
    (loss,) = run_forward(layer, b, t)
    sign = np.ones_like(x)
    sign[np.arange(4), LABELS.astype(int)] = -1
    m = np.maximum(0, 1 + sign * x)
    assert float(loss) == pytest.approx((m if norm == "L1" else m ** 2).sum() / 4)
    check_gradients(layer, b, t, check_bottoms=[0], top_weights=[np.array(1.3)])


def test_multinomial_logistic_loss():
    p = _softmax(rand(4, 3))
    p[0, 0] = 0.0  # clipped at 1e-20, as Caffe
    layer, b, t = make_layer('type: "MultinomialLogisticLoss"', [p, LABELS])
    (loss,) = run_forward(layer, b, t)
    picked = np.maximum(p[np.arange(4), LABELS.astype(int)], 1e-20)
    assert float(loss) == pytest.approx(-np.log(picked).sum() / 4)
    b[0].data[0, 0] = 0.3
    check_gradients(layer, b, t, check_bottoms=[0], top_weights=[np.array(0.6)], eps=1e-7)
    with pytest.raises(FormatError, match="label 3 is out of range"):
        run_forward(layer, make_layer('type: "MultinomialLogisticLoss"', [p, np.array([0.0, 3, 1, 1])])[1], t)


@pytest.mark.parametrize("extra,divisor", [
    ("", 2),                                              # Caffe's default here: BATCH_SIZE (N = 2)
    ("loss_param { normalization: FULL }", 12),
    ("loss_param { normalization: VALID }", 12),
    ("loss_param { normalization: VALID ignore_label: -1 }", 10),
    ("loss_param { normalization: NONE }", 1),
    ("loss_param { normalize: true ignore_label: -1 }", 10),   # legacy normalize: VALID
    ("loss_param { normalize: false }", 2),
    ("loss_param { normalize: true normalization: BATCH_SIZE }", 2),  # normalization wins
])
def test_sigmoid_cross_entropy_loss(extra, divisor):
    x = rand(2, 3, 2) * 3
    target = (rand(2, 3, 2) > 0).astype(float)
    target[0, 1, 1] = target[1, 2, 0] = -1  # ignored where ignore_label is -1
    layer, b, t = make_layer(f'type: "SigmoidCrossEntropyLoss" {extra}', [x, target])
    (loss,) = run_forward(layer, b, t)
    p = 1 / (1 + np.exp(-x))
    per = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    if "ignore_label" in extra:
        per[target == -1] = 0
    assert float(loss) == pytest.approx(per.sum() / divisor)
    check_gradients(layer, b, t, check_bottoms=[0], top_weights=[np.array(0.9)])


def test_sigmoid_cross_entropy_does_not_overflow():
    layer, b, t = make_layer('type: "SigmoidCrossEntropyLoss"', [np.array([[800.0, -800.0]]), np.array([[0.0, 1.0]])])
    assert float(run_forward(layer, b, t)[0]) == pytest.approx(1600.0)


@pytest.mark.parametrize("extra", ["", "loss_param { ignore_label: 2 }", "loss_param { normalization: BATCH_SIZE }",
                                   "infogain_loss_param { axis: 1 } loss_param { normalization: FULL }"])
def test_infogain_loss_from_a_third_bottom(extra):
    x = rand(4, 3, 2)
    labels = np.array([[0, 2], [1, 1], [2, 0], [1, 2.0]])
    h = np.abs(rand(3, 3)) + np.eye(3)
    layer, b, t = make_layer(f'type: "InfogainLoss" {extra}', [x, labels, h], n_tops=2)
    loss, prob = run_forward(layer, b, t)
    p = _softmax(x)
    np.testing.assert_allclose(prob, p)
    total, valid = 0.0, 0
    for i in range(4):
        for j in range(2):
            lab = int(labels[i, j])
            if "ignore_label" in extra and lab == 2:
                continue
            total -= (h[lab] * np.log(p[i, :, j])).sum()
            valid += 1
    divisor = {"": valid, "loss_param { ignore_label: 2 }": valid, "loss_param { normalization: BATCH_SIZE }": 4}
    assert float(loss) == pytest.approx(total / divisor.get(extra, 8))
    check_gradients(layer, b, t, check_bottoms=[0], top_weights=[np.array(1.1), np.zeros((4, 3, 2))])


def test_infogain_identity_is_softmax_with_loss_and_reads_source(tmp_path):
    from datakit.formats.blobproto import write_binaryproto
    x, labels = rand(5, 4), np.array([0.0, 3, 1, 2, 2])
    write_binaryproto(tmp_path / "H.binaryproto", np.eye(4, dtype=np.float32))
    text = f'type: "InfogainLoss" infogain_loss_param {{ source: "{tmp_path / "H.binaryproto"}" }}'
    layer, b, t = make_layer(text, [x, labels])
    ref, rb, rt = make_layer('type: "SoftmaxWithLoss"', [x, labels])
    assert float(run_forward(layer, b, t)[0]) == pytest.approx(float(run_forward(ref, rb, rt)[0]))
    check_gradients(layer, b, t, check_bottoms=[0], top_weights=[np.array(1.0)])
    with pytest.raises(FormatError, match="needs infogain_loss_param.source"):
        make_layer('type: "InfogainLoss"', [x, labels])
    with pytest.raises(FormatError, match="missing.binaryproto: file not found"):
        make_layer(f'type: "InfogainLoss" infogain_loss_param {{ source: "{tmp_path}/missing.binaryproto" }}',
                   [x, labels])


@pytest.mark.parametrize("params", ["", "margin: 2.5", "legacy_version: true", "legacy_version: true margin: 3"])
def test_contrastive_loss(params):
    a, c = rand(6, 3), rand(6, 3)
    y = np.array([1.0, 0, 0, 1, 0, 0])
    layer, b, t = make_layer(f'type: "ContrastiveLoss" contrastive_loss_param {{ {params} }}', [a, c, y])
    (loss,) = run_forward(layer, b, t)
    margin = 2.5 if "2.5" in params else 3.0 if "margin: 3" in params else 1.0
    d2 = ((a - c) ** 2).sum(axis=1)
    other = np.maximum(margin - d2, 0) if "legacy" in params else np.maximum(margin - np.sqrt(d2), 0) ** 2
    assert float(loss) == pytest.approx(np.where(y == 1, d2, other).sum() / 12)
    # The non-legacy dissimilar gradient divides by d + 1e-4 (Caffe's), so it is exact to ~1e-4 only.
    check_gradients(layer, b, t, check_bottoms=[0, 1], top_weights=[np.array(0.8)],
                    tol=1e-5 if "legacy" in params else 3e-4)


def test_softmax_with_loss_normalization_wins_over_legacy_normalize():
    scores, labels = rand(3, 4), np.array([0.0, 1, 2])
    layer, b, t = make_layer('type: "SoftmaxWithLoss" loss_param { normalize: false normalization: VALID }',
                             [scores, labels])
    ref, rb, rt = make_layer('type: "SoftmaxWithLoss" loss_param { normalization: NONE }', [scores, labels])
    assert float(run_forward(layer, b, t)[0]) == pytest.approx(float(run_forward(ref, rb, rt)[0]) / 3)
