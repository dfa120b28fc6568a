"""Layers: finite-difference gradient checks in float64 and hand-computed Caffe semantics."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from google.protobuf import text_format

from datakit.errors import FormatError
from datakit.formats import caffe_pb2
from trainer.layers import Blob, layer_class

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def make_layer(text: str, bottom_values: list[np.ndarray], n_tops: int = 1, phase: int = TRAIN,
               seed: int = 0):
    """A float64 layer from LayerParameter text, set up on blobs holding ``bottom_values``."""
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    if not lp.name:
        lp.name = "under_test"
    cls = layer_class(lp.type, lp.name)
    layer = cls(lp, phase, np, dtype=np.float64, rng=np.random.default_rng(seed))
    bottoms = []
    for i, v in enumerate(bottom_values):
        b = Blob(np, v.shape, np.float64, name=f"b{i}")
        b.data = np.array(v, dtype=np.float64)
        bottoms.append(b)
    tops = [Blob(np, (), np.float64, name=f"t{i}") for i in range(n_tops)]
    layer.check_counts(len(bottoms), len(tops))
    layer.setup(bottoms, tops)
    layer.reshape(bottoms, tops)
    return layer, bottoms, tops


def run_forward(layer, bottoms, tops):
    layer.reshape(bottoms, tops)
    layer.forward(bottoms, tops)
    return [t.data.copy() for t in tops]


def check_gradients(layer, bottoms, tops, *, check_bottoms=None, eps=1e-6, tol=1e-5, samples=40,
                    seed=1, top_weights=None, check_params=True):
    """Compare analytic bottom/param gradients of L = Σ_t Σ R_t·top_t with central differences."""
    rng = np.random.default_rng(seed)
    outs = run_forward(layer, bottoms, tops)
    weights = top_weights or [rng.standard_normal(o.shape) for o in outs]

    def objective() -> float:
        vals = run_forward(layer, bottoms, tops)
        return float(sum((w * v).sum() for w, v in zip(weights, vals)))

    objective()
    for t, w in zip(tops, weights):
        t.diff = np.array(w, dtype=np.float64).reshape(t.shape)
    for b in layer.blobs:
        b.diff = np.zeros(b.shape)
    check_bottoms = list(range(len(bottoms))) if check_bottoms is None else check_bottoms
    down = [i in check_bottoms for i in range(len(bottoms))]
    for b in bottoms:
        b.diff = np.zeros(b.shape)
    layer.backward(tops, down, bottoms)
    targets = [(bottoms[i], bottoms[i].diff.copy(), f"bottom {i}") for i in check_bottoms]
    if check_params:
        targets += [(b, b.diff.copy(), f"param {k}") for k, b in enumerate(layer.blobs)]
    checked = 0
    for blob, analytic, what in targets:
        flat = blob.data.reshape(-1)
        idx = rng.choice(flat.size, size=min(samples, flat.size), replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            plus = objective()
            flat[i] = old - eps
            minus = objective()
            flat[i] = old
            numeric = (plus - minus) / (2 * eps)
            a = analytic.reshape(-1)[i]
            assert abs(a - numeric) <= tol * max(1.0, abs(numeric), abs(a)), \
                f"{what}[{i}]: analytic {a} vs numeric {numeric}"
            checked += 1
    assert checked > 0


_RNGS: dict[str, np.random.Generator] = {}


def rand(*shape):
    """Standard normal values from a generator of the running test's own (seeded by its id).

    One generator for the whole module made each test's values depend on which tests had drawn
    before it in its process, and `make test`'s two processes share the tests out differently on
    every run: a Log layer's gradient check met log of a negative number in one run of ten.
    """
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    if test not in _RNGS:
        _RNGS[test] = np.random.default_rng(zlib.crc32(test.encode()))
    return _RNGS[test].standard_normal(shape)


# ------------------------------------------------------------- convolution ----

@pytest.mark.parametrize("params,shape", [
    ("num_output: 3 kernel_size: 3", (2, 2, 5, 5)),
    ("num_output: 4 kernel_size: 3 pad: 1 stride: 2", (2, 3, 7, 6)),
    ("num_output: 4 kernel_h: 2 kernel_w: 3 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2", (1, 2, 5, 7)),
    ("num_output: 4 kernel_size: 3 group: 2 pad: 1", (2, 4, 5, 5)),
    ("num_output: 2 kernel_size: 3 dilation: 2 pad: 2", (1, 2, 7, 7)),
    ("num_output: 3 kernel_size: 1 bias_term: false", (2, 3, 4, 4)),
    # Many pixels per weight (N·P >= mg·kk): the weight gradient takes the dy · colᵀ arrangement.
    ("num_output: 2 kernel_size: 2", (2, 1, 9, 9)),
    ("num_output: 2 kernel_size: 2 group: 2 pad: 1", (2, 2, 8, 8)),
])
def test_convolution_gradients(params, shape):
    text = f'type: "Convolution" convolution_param {{ {params} weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" std: 0.5 }} }}'
    layer, b, t = make_layer(text, [rand(*shape)])
    check_gradients(layer, b, t)


def test_convolution_weight_gradient_arrangements_cover_both_sides():
    """The parametrisation above exercises both of backward's weight-gradient arrangements."""
    sides = set()
    for params, shape in test_convolution_gradients.pytestmark[0].args[1]:
        text = f'type: "Convolution" convolution_param {{ {params} }}'
        layer, b, t = make_layer(text, [rand(*shape)])
        pixels = t[0].count // layer.num_output  # N·P
        sides.add(pixels >= (layer.num_output // layer.group) * (layer.blobs[0].count // layer.num_output))
    assert sides == {True, False}


def test_convolution_matches_direct_sum():
    x = rand(1, 4, 6, 6)
    layer, b, t = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 '
                             'stride: 2 pad: 1 group: 2 weight_filler { type: "gaussian" } '
                             'bias_filler { type: "gaussian" } }', [x])
    (y,) = run_forward(layer, b, t)
    w, bias = layer.blobs[0].data, layer.blobs[1].data
    assert y.shape == (1, 2, 3, 3)  # floor((6 + 2 - 3) / 2) + 1
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for m in range(2):
        g = m  # one output per group, two input channels per group
        for oy in range(3):
            for ox in range(3):
                patch = xp[0, 2 * g:2 * g + 2, 2 * oy:2 * oy + 3, 2 * ox:2 * ox + 3]
                assert y[0, m, oy, ox] == pytest.approx((patch * w[m]).sum() + bias[m])


def test_convolution_rejects_bad_group():
    with pytest.raises(FormatError, match="group"):
        make_layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 1 group: 3 }',
                   [rand(1, 4, 3, 3)])


# ----------------------------------------------------------------- pooling ----

def test_pool_output_size_ceil_mode_and_pad_rule():
    from trainer.kernels import pool_out_size
    assert pool_out_size(55, 3, 0, 2) == 27          # CaffeNet pool1
    assert pool_out_size(13, 3, 0, 2) == 6
    assert pool_out_size(6, 3, 0, 2) == 3            # ceil((6-3)/2)+1 = 3 (floor would give 2)
    assert pool_out_size(6, 3, 0, 2, ceil_mode=False) == 2
    # ceil((5+2-2)/2)+1 = 4, but window 3 would start at 6 >= 5+1: dropped -> 3
    assert pool_out_size(5, 2, 1, 2) == 3
    assert pool_out_size(28, 2, 0, 2) == 14


@pytest.mark.parametrize("params,shape", [
    ("pool: MAX kernel_size: 3 stride: 2", (2, 2, 7, 7)),
    ("pool: MAX kernel_size: 3 stride: 2 pad: 1", (1, 2, 6, 5)),
    ("pool: MAX kernel_size: 2 stride: 2", (1, 3, 5, 5)),
    ("pool: AVE kernel_size: 3 stride: 2", (2, 2, 6, 6)),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 2, 7, 6)),
    ("pool: AVE global_pooling: true", (2, 3, 4, 5)),
    ("pool: MAX global_pooling: true", (2, 3, 4, 5)),
    ("pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 1", (1, 1, 5, 6)),
])
def test_pooling_gradients(params, shape):
    layer, b, t = make_layer(f'type: "Pooling" pooling_param {{ {params} }}', [rand(*shape)])
    check_gradients(layer, b, t)


def test_ave_pooling_divisor_counts_inner_padding_only():
    # 3x3 input of ones, kernel 3, stride 2, pad 1 -> out 2x2.
    # Window (0,0) covers rows -1..1: hend = min(2, 3+1) = 2, divisor 3x3 = 9 but sums 4 ones.
    # Window (1,1) covers rows 1..3: hend = min(4, 4) = 4, divisor 9, sums 4 ones.
    x = np.ones((1, 1, 3, 3))
    layer, b, t = make_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }', [x])
    (y,) = run_forward(layer, b, t)
    np.testing.assert_allclose(y[0, 0], np.full((2, 2), 4 / 9))
    # Without padding and in ceil mode the last window is clipped to the image:
    # 4 wide, kernel 3, stride 2 -> out ceil(1/2)+1 = 2; window 1 spans cols 2..4, hend = min(5, 4) = 4.
    x = np.arange(16, dtype=float).reshape(1, 1, 4, 4)
    layer, b, t = make_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 }', [x])
    (y,) = run_forward(layer, b, t)
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0, 1, 1] == pytest.approx(x[0, 0, 2:4, 2:4].sum() / 4)


def test_max_pooling_ignores_padding_and_keeps_first_tie():
    x = -np.ones((1, 1, 2, 2))  # all negative: a zero pad must not win
    layer, b, t = make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 1 pad: 1 }', [x])
    (y,) = run_forward(layer, b, t)
    np.testing.assert_array_equal(y, -np.ones((1, 1, 3, 3)))
    x = np.array([[[[5.0, 5.0], [1.0, 5.0]]]])
    layer, b, t = make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }', [x])
    run_forward(layer, b, t)
    t[0].diff = np.ones((1, 1, 1, 1))
    layer.backward(t, [True], b)
    np.testing.assert_array_equal(b[0].diff[0, 0], [[1.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("params", ["kernel_size: 3 stride: 2", "kernel_size: 3 stride: 2 pad: 1",
                                    "kernel_size: 2 stride: 1"])
def test_max_pooling_in_test_phase_gives_train_values_and_gradients(params):
    """TEST skips the argmax; values (NaN skipped, padding never wins) and a late backward are as in TRAIN."""
    x = np.random.default_rng(4).standard_normal((2, 3, 7, 6))
    x[0, 1, 2, 3] = np.nan
    text = f'type: "Pooling" pooling_param {{ pool: MAX {params} }}'
    grads = {}
    for phase in (TRAIN, TEST):
        layer, b, t = make_layer(text, [x], phase=phase)
        (y,) = run_forward(layer, b, t)
        assert (layer._arg is None) == (phase == TEST)
        t[0].diff = np.arange(y.size, dtype=np.float64).reshape(y.shape)
        layer.backward(t, [True], b)
        grads[phase] = (y, b[0].diff.copy())
    np.testing.assert_array_equal(grads[TEST][0], grads[TRAIN][0])
    np.testing.assert_array_equal(grads[TEST][1], grads[TRAIN][1])
    assert not np.isnan(grads[TEST][0]).any()


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_pooling_window_that_covers_no_input_is_an_error(pool):
    """Kernel 2, stride 3 on 9 rows (ceil mode, no pad): the 4th window starts at row 9, past the input."""
    x = np.ones((1, 1, 9, 8))
    with pytest.raises(FormatError, match=r"starts at row 9 of a 9-row input"):
        make_layer(f'type: "Pooling" pooling_param {{ pool: {pool} kernel_size: 2 stride: 3 }}', [x])
    # The same stride with pad 1, or in floor mode, leaves every window on the image: accepted.
    for extra in ("pad: 1", "round_mode: FLOOR"):
        layer, b, t = make_layer(f'type: "Pooling" pooling_param {{ pool: {pool} kernel_size: 2 stride: 3 {extra} }}',
                                 [x])
        (y,) = run_forward(layer, b, t)
        assert np.isfinite(y).all()


def test_max_pooling_mask_top_is_flat_input_index():
    x = np.array([[[[1.0, 9.0, 2.0], [3.0, 4.0, 8.0], [7.0, 0.0, 5.0]]]])
    layer, b, t = make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 1 }', [x], n_tops=2)
    y, mask = run_forward(layer, b, t)
    np.testing.assert_array_equal(y[0, 0], [[9, 9], [7, 8]])
    np.testing.assert_array_equal(mask[0, 0], [[1, 1], [6, 5]])


# --------------------------------------------------------------------- LRN ----

@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_gradients(region):
    text = f'type: "LRN" lrn_param {{ local_size: 3 alpha: 0.5 beta: 0.75 norm_region: {region} }}'
    layer, b, t = make_layer(text, [rand(2, 5, 4, 4)])
    check_gradients(layer, b, t)


def test_lrn_across_channels_by_hand():
    x = rand(1, 4, 2, 2)
    layer, b, t = make_layer('type: "LRN" lrn_param { local_size: 3 alpha: 0.3 beta: 0.6 k: 2 }', [x])
    (y,) = run_forward(layer, b, t)
    for c in range(4):
        window = x[0, max(0, c - 1):c + 2]
        scale = 2 + 0.3 / 3 * (window ** 2).sum(axis=0)
        np.testing.assert_allclose(y[0, c], x[0, c] * scale ** -0.6)


def test_lrn_within_channel_by_hand():
    x = rand(1, 1, 3, 3)
    layer, b, t = make_layer('type: "LRN" lrn_param { local_size: 3 alpha: 0.4 beta: 0.75 norm_region: WITHIN_CHANNEL }', [x])
    (y,) = run_forward(layer, b, t)
    sq = np.pad(x[0, 0] ** 2, 1)
    for i in range(3):
        for j in range(3):
            # pad 1 lies inside H + pad for every window: the divisor is always 9
            p = sq[i:i + 3, j:j + 3].sum() / 9
            assert y[0, 0, i, j] == pytest.approx(x[0, 0, i, j] * (1 + 0.4 * p) ** -0.75)


# ------------------------------------------------------------- activations ----

@pytest.mark.parametrize("text", [
    'type: "ReLU"', 'type: "ReLU" relu_param { negative_slope: 0.1 }', 'type: "Sigmoid"', 'type: "TanH"',
])
def test_activation_gradients(text):
    x = rand(2, 3, 4)
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the ReLU kink
    layer, b, t = make_layer(text, [x])
    check_gradients(layer, b, t)


def test_relu_in_place_forward_backward():
    x = np.array([[-2.0, -0.5, 0.0, 1.5, 3.0]])
    layer, b, _ = make_layer('type: "ReLU" relu_param { negative_slope: 0.5 }', [x])
    tops = [b[0]]  # in place: top is the bottom blob
    layer.forward(b, tops)
    np.testing.assert_allclose(b[0].data, [[-1.0, -0.25, 0.0, 1.5, 3.0]])
    b[0].diff = np.ones_like(x)
    layer.backward(tops, [True], b)
    np.testing.assert_allclose(b[0].diff, [[0.5, 0.5, 0.5, 1.0, 1.0]])


def test_dropout_train_scales_and_test_is_identity():
    x = np.ones((1000, 10))
    layer, b, t = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [x], phase=TRAIN)
    (y,) = run_forward(layer, b, t)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.7)
    assert 0.66 < kept.mean() < 0.74
    t[0].diff = np.full(y.shape, 2.0)
    layer.backward(t, [True], b)
    np.testing.assert_allclose(b[0].diff, np.where(kept, 2.0 / 0.7, 0.0))
    layer, b, t = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [x], phase=TEST)
    (y,) = run_forward(layer, b, t)
    np.testing.assert_array_equal(y, x)


# ---------------------------------------------------------- inner product ----

@pytest.mark.parametrize("params,shape", [
    ("num_output: 5", (3, 2, 2, 2)),
    ("num_output: 4 transpose: true", (3, 6)),
    ("num_output: 3 axis: 2", (2, 3, 4)),
    ("num_output: 3 bias_term: false", (4, 5)),
])
def test_inner_product_gradients(params, shape):
    text = f'type: "InnerProduct" inner_product_param {{ {params} weight_filler {{ type: "gaussian" }} bias_filler {{ type: "gaussian" }} }}'
    layer, b, t = make_layer(text, [rand(*shape)])
    check_gradients(layer, b, t)


def test_inner_product_weight_layout():
    x = rand(2, 3)
    layer, b, t = make_layer('type: "InnerProduct" inner_product_param { num_output: 4 weight_filler { type: "gaussian" } }', [x])
    assert layer.blobs[0].shape == (4, 3)
    (y,) = run_forward(layer, b, t)
    np.testing.assert_allclose(y, x @ layer.blobs[0].data.T)
    layer, b, t = make_layer('type: "InnerProduct" inner_product_param { num_output: 4 transpose: true weight_filler { type: "gaussian" } }', [x])
    assert layer.blobs[0].shape == (3, 4)


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_weight_gradient_at_batch_1_has_matmuls_bits(transpose):
    """At batch 1 the weight gradient takes an outer product (NumPy's matmul is slow with an inner
    dimension of 1): the same bits as the matmul, signed zeros included, fresh and accumulated."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 6))
    x[0, :2], x[0, 2] = 0.0, -0.0
    params = "num_output: 5" + (" transpose: true" if transpose else "")
    layer, b, t = make_layer(f'type: "InnerProduct" inner_product_param {{ {params} weight_filler {{ type: "gaussian" }} }}',
                             [x])
    run_forward(layer, b, t)
    dy = rng.standard_normal((1, 5))
    dy[0, 0], dy[0, 1] = -0.0, -2.0
    a, c = (x.T, dy) if transpose else (dy.T, x)
    expected = np.matmul(a, c)
    assert np.signbit(np.multiply(a, c)[expected == 0]).any()  # the inputs do make -0.0 products
    t[0].diff = dy
    layer.backward(t, [True], b)
    assert layer.blobs[0].diff.tobytes() == expected.tobytes()
    layer.backward(t, [True], b)  # accumulating: the second product is added
    assert layer.blobs[0].diff.tobytes() == (expected + expected).tobytes()


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_data_gradient_of_one_output_has_matmuls_bits(transpose):
    """num_output 1 (a regression head): the data gradient is an outer product too, matmul's bits."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 6))
    params = "num_output: 1" + (" transpose: true" if transpose else "")
    layer, b, t = make_layer(f'type: "InnerProduct" inner_product_param {{ {params} weight_filler {{ type: "gaussian" }} }}',
                             [x])
    layer.blobs[0].data.reshape(-1)[:2] = [0.0, -0.0]
    run_forward(layer, b, t)
    dy = rng.standard_normal((4, 1))
    dy[0, 0], dy[1, 0] = -0.0, -2.0
    w = layer.blobs[0].data
    expected = np.matmul(w, dy.T).T if transpose else np.matmul(dy, w)
    assert np.signbit(expected).sum() < np.signbit(dy * w.reshape(1, -1)).sum()  # -0.0 products exist
    t[0].diff = dy
    layer.backward(t, [True], b)
    assert b[0].diff.tobytes() == np.ascontiguousarray(expected).tobytes()


# ------------------------------------------------------------- structural ----

def test_concat_flatten_reshape_eltwise_gradients():
    layer, b, t = make_layer('type: "Concat" concat_param { axis: 1 }', [rand(2, 2, 3), rand(2, 3, 3)])
    assert t[0].shape == (2, 5, 3)
    check_gradients(layer, b, t)
    layer, b, t = make_layer('type: "Flatten"', [rand(2, 3, 2, 2)])
    assert t[0].shape == (2, 12)
    check_gradients(layer, b, t)
    layer, b, t = make_layer('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } }', [rand(2, 3, 4)])
    assert t[0].shape == (2, 6, 2)
    check_gradients(layer, b, t)
    for op in ("SUM coeff: 0.5 coeff: -2", "PROD", "MAX"):
        layer, b, t = make_layer(f'type: "Eltwise" eltwise_param {{ operation: {op} }}', [rand(2, 3), rand(2, 3)])
        check_gradients(layer, b, t)


def test_split_sums_gradients():
    layer, b, t = make_layer('type: "Split"', [rand(2, 3)], n_tops=3)
    check_gradients(layer, b, t)


def test_reshape_errors_name_the_layer():
    with pytest.raises(FormatError, match="under_test"):
        make_layer('type: "Reshape" reshape_param { shape { dim: 5 dim: -1 } }', [rand(2, 3)])


# -------------------------------------------------------------------- loss ----

def test_softmax_gradients():
    layer, b, t = make_layer('type: "Softmax"', [rand(3, 4, 2)])
    check_gradients(layer, b, t)


@pytest.mark.parametrize("extra", ["", "loss_param { ignore_label: 2 }",
                                   "loss_param { ignore_label: 2 normalization: BATCH_SIZE }",
                                   "loss_param { normalization: FULL }"])
def test_softmax_with_loss_gradients(extra):
    labels = np.array([[0, 2], [1, 3], [2, 2]], dtype=float)
    layer, b, t = make_layer(f'type: "SoftmaxWithLoss" {extra}', [rand(3, 4, 2), labels])
    check_gradients(layer, b, t, check_bottoms=[0], top_weights=[np.array(1.7)])


def test_softmax_with_loss_values():
    scores = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, 1.0, 0.0]])
    labels = np.array([2.0, 1.0, 7.0])
    layer, b, t = make_layer('type: "SoftmaxWithLoss" loss_param { ignore_label: 7 }', [scores, labels])
    (loss,) = run_forward(layer, b, t)
    p = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    assert float(loss) == pytest.approx(-(np.log(p[0, 2]) + np.log(p[1, 1])) / 2)  # VALID: 2 labels
    layer, b, t = make_layer('type: "SoftmaxWithLoss" loss_param { ignore_label: 7 normalization: BATCH_SIZE }',
                             [scores, labels])
    (loss,) = run_forward(layer, b, t)
    assert float(loss) == pytest.approx(-(np.log(p[0, 2]) + np.log(p[1, 1])) / 3)


def test_softmax_with_loss_underflow_is_flt_min():
    scores = np.array([[0.0, 1000.0]])
    layer, b, t = make_layer('type: "SoftmaxWithLoss"', [scores, np.array([0.0])])
    (loss,) = run_forward(layer, b, t)
    assert float(loss) == pytest.approx(87.3365, abs=1e-4)


def test_softmax_with_loss_rejects_out_of_range_label():
    layer, b, t = make_layer('type: "SoftmaxWithLoss"', [rand(2, 3), np.array([0.0, 3.0])])
    with pytest.raises(FormatError, match="label 3"):
        run_forward(layer, b, t)


def test_accuracy_top_k_and_ties():
    scores = np.array([[0.1, 0.5, 0.4],    # label 1: top-1 right
                       [0.3, 0.3, 0.4],    # label 0: tie with class 1 counts against -> 2 better
                       [0.2, 0.5, 0.3],    # label 2: second -> right for top-2
                       [0.5, 0.2, 0.3]])   # label 1: third
    labels = np.array([1.0, 0.0, 2.0, 1.0])
    layer, b, t = make_layer('type: "Accuracy"', [scores, labels], phase=TEST)
    (acc,) = run_forward(layer, b, t)
    assert float(acc) == pytest.approx(1 / 4)
    layer, b, t = make_layer('type: "Accuracy" accuracy_param { top_k: 2 }', [scores, labels], phase=TEST)
    (acc,) = run_forward(layer, b, t)
    assert float(acc) == pytest.approx(2 / 4)  # row 1: two classes >= label's -> not within top 2
    layer, b, t = make_layer('type: "Accuracy" accuracy_param { ignore_label: 1 }', [scores, labels],
                             n_tops=2, phase=TEST)
    acc, per_class = run_forward(layer, b, t)
    assert float(acc) == 0.0
    np.testing.assert_allclose(per_class, [0.0, 0.0, 0.0])


# ----------------------------------------------------------------- fillers ----

def test_fillers_follow_caffe_definitions():
    from trainer.fillers import fill
    rng = np.random.default_rng(0)
    f = caffe_pb2.FillerParameter(type="xavier")
    w = fill((64, 32, 3, 3), f, rng)
    bound = np.sqrt(3 / (32 * 9))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    f = caffe_pb2.FillerParameter(type="msra", variance_norm=caffe_pb2.FillerParameter.FAN_OUT)
    w = fill((200, 50, 3, 3), f, rng)
    assert w.std() == pytest.approx(np.sqrt(2 / (200 * 9)), rel=0.05)
    f = caffe_pb2.FillerParameter(type="uniform", min=-2, max=-1)
    w = fill((1000,), f, rng)
    assert w.min() >= -2 and w.max() <= -1
    f = caffe_pb2.FillerParameter(type="gaussian", mean=3, std=0.5)
    assert fill((10000,), f, rng).mean() == pytest.approx(3, abs=0.05)
    assert (fill((3, 2), caffe_pb2.FillerParameter(type="constant", value=0.2), rng) == np.float32(0.2)).all()
    a = fill((5, 5), caffe_pb2.FillerParameter(type="gaussian"), np.random.default_rng(7))
    b = fill((5, 5), caffe_pb2.FillerParameter(type="gaussian"), np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(FormatError, match="unknown filler"):
        fill((2,), caffe_pb2.FillerParameter(type="nope"), rng)


def test_unknown_layer_type_is_a_clear_error():
    with pytest.raises(FormatError, match="unknown layer type 'Nope'"):
        layer_class("Nope", "mylayer")


# ------------------------------------------------------- BatchNorm / Scale ----

def test_batchnorm_train_gradients_and_running_stats():
    x = rand(4, 3, 2, 2) * 2 + 1
    layer, b, t = make_layer('type: "BatchNorm" batch_norm_param { use_global_stats: false }', [x])
    check_gradients(layer, b, t)
    layer, b, t = make_layer('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.5 }', [x])
    (y,) = run_forward(layer, b, t)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-4)
    m = 16
    np.testing.assert_allclose(layer.blobs[0].data, x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(layer.blobs[1].data, x.var(axis=(0, 2, 3)) * m / (m - 1))
    assert layer.blobs[2].data[0] == 1.0
    run_forward(layer, b, t)
    assert layer.blobs[2].data[0] == 1.5  # 1 * 0.5 + 1


def test_batchnorm_test_phase_uses_stored_statistics():
    x = rand(2, 2, 3)
    layer, b, t = make_layer('type: "BatchNorm" batch_norm_param { eps: 0.001 }', [x], phase=TEST)
    layer.blobs[0].data[...] = [2.0, 4.0]
    layer.blobs[1].data[...] = [8.0, 18.0]
    layer.blobs[2].data[...] = [2.0]
    (y,) = run_forward(layer, b, t)
    mean, var = np.array([1.0, 2.0]), np.array([4.0, 9.0])
    np.testing.assert_allclose(y, (x - mean[None, :, None]) / np.sqrt(var[None, :, None] + 0.001))
    check_gradients(layer, b, t, check_params=False)  # statistics are not learned


def test_batchnorm_refuses_learned_statistics():
    with pytest.raises(FormatError, match="lr_mult"):
        make_layer('type: "BatchNorm" param { lr_mult: 1 }', [rand(2, 2)])


@pytest.mark.parametrize("params,shapes", [
    ("bias_term: true filler { type: 'gaussian' } bias_filler { type: 'gaussian' }", [(2, 3, 4)]),
    ("axis: 0 num_axes: 2 filler { type: 'gaussian' }", [(2, 3, 4)]),
    ("axis: 1", [(2, 3, 4), (3,)]),
])
def test_scale_gradients(params, shapes):
    layer, b, t = make_layer(f'type: "Scale" scale_param {{ {params} }}', [rand(*s) for s in shapes])
    check_gradients(layer, b, t)


# ----------------------------------------------------- more Caffe layers ----

@pytest.mark.parametrize("text", [
    'type: "AbsVal"', 'type: "Power" power_param { power: 2 scale: 0.5 shift: 3 }',
    'type: "Power" power_param { power: 1 scale: -2 shift: 1 }', 'type: "ELU" elu_param { alpha: 0.7 }',
    'type: "PReLU" prelu_param { filler { type: "uniform" min: 0.1 max: 0.4 } }',
    'type: "PReLU" prelu_param { channel_shared: true }',
])
def test_more_activation_gradients(text):
    x = rand(2, 3, 4)
    x[np.abs(x) < 1e-3] = 0.5
    layer, b, t = make_layer(text, [x])
    check_gradients(layer, b, t)


def test_power_and_prelu_values():
    x = np.array([[-2.0, 0.5, 3.0]])
    layer, b, t = make_layer('type: "Power" power_param { power: 2 scale: 2 shift: 1 }', [x])
    np.testing.assert_allclose(run_forward(layer, b, t)[0], (1 + 2 * x) ** 2)
    layer, b, t = make_layer('type: "PReLU" prelu_param { channel_shared: true }', [x])
    np.testing.assert_allclose(run_forward(layer, b, t)[0], [[-0.5, 0.5, 3.0]])  # default slope 0.25


def test_slice_and_euclidean_loss():
    layer, b, t = make_layer('type: "Slice" slice_param { axis: 1 slice_point: 1 slice_point: 3 }',
                             [rand(2, 5, 2)], n_tops=3)
    assert [x.shape for x in t] == [(2, 1, 2), (2, 2, 2), (2, 2, 2)]
    check_gradients(layer, b, t)
    a, c = rand(3, 4), rand(3, 4)
    layer, b, t = make_layer('type: "EuclideanLoss"', [a, c])
    (loss,) = run_forward(layer, b, t)
    assert float(loss) == pytest.approx(((a - c) ** 2).sum() / 6)
    check_gradients(layer, b, t, top_weights=[np.array(0.7)])


def test_argmax():
    x = np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]])
    layer, b, t = make_layer('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', [x], phase=TEST)
    (y,) = run_forward(layer, b, t)
    np.testing.assert_allclose(y, [[[1, 2], [0.7, 0.2]], [[0, 2], [0.5, 0.4]]])
    layer, b, t = make_layer('type: "ArgMax" argmax_param { axis: 1 }', [x], phase=TEST)
    np.testing.assert_array_equal(run_forward(layer, b, t)[0], [[1], [0]])


@pytest.mark.parametrize("params,shape", [
    ("num_output: 3 kernel_size: 4 stride: 2 pad: 1", (2, 2, 3, 3)),
    ("num_output: 4 kernel_size: 3 group: 2", (1, 4, 3, 4)),
])
def test_deconvolution_gradients_and_size(params, shape):
    text = f'type: "Deconvolution" convolution_param {{ {params} weight_filler {{ type: "gaussian" }} bias_filler {{ type: "gaussian" }} }}'
    layer, b, t = make_layer(text, [rand(*shape)])
    check_gradients(layer, b, t)
    if "stride: 2" in params:
        assert t[0].shape == (2, 3, 6, 6)  # 2*(3-1) + 4 - 2


def test_deconvolution_is_the_adjoint_of_convolution():
    x = rand(1, 2, 5, 5)
    conv, cb, ct = make_layer('type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 stride: 2 '
                              'pad: 1 bias_term: false weight_filler { type: "gaussian" } }', [x])
    (y,) = run_forward(conv, cb, ct)
    z = rand(*y.shape)
    deconv, db, dt = make_layer('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 3 stride: 2 '
                                'pad: 1 bias_term: false }', [z])
    deconv.blobs[0].data[...] = conv.blobs[0].data  # (3, 2, 3, 3): C_in of deconv = C_out of conv
    (x_back,) = run_forward(deconv, db, dt)
    assert x_back.shape == x.shape
    assert np.vdot(y, z) == pytest.approx(np.vdot(x, x_back))
