"""Element-wise and shape layers of Caffe's catalogue: gradient checks for every parameter
combination and values from Caffe's formulas (src/caffe/layers/*.cpp)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from datakit.errors import FormatError
from tests.test_layers import TEST, check_gradients, make_layer, rand, run_forward

# ------------------------------------------------------- neuron layers ----


@pytest.mark.parametrize("text", [
    'type: "BNLL"', 'type: "Exp"', 'type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }',
    'type: "Exp" exp_param { scale: -1.5 shift: 0.3 }',
    'type: "Log" exp_param { }', 'type: "Log" log_param { base: 10 scale: 2 shift: 5 }',
    'type: "Threshold" threshold_param { threshold: 0.2 }',
])
def test_neuron_gradients(text):
    x = rand(2, 3, 4)
    if "Log" in text and "shift" not in text:
        x = np.abs(x) + 0.5
    if "shift: 5" in text:
        x = np.maximum(x, -2.0)   # log(2x + 5) needs x > -2.5
    x[np.abs(x - 0.2) < 1e-3] = 0.7  # keep away from Threshold's step
    layer, b, t = make_layer(text, [x])
    check_gradients(layer, b, t)


def test_neuron_values():
    x = np.array([[-60.0, -1.0, 0.0, 2.0, 60.0]])
    layer, b, t = make_layer('type: "BNLL"', [x])
    np.testing.assert_allclose(run_forward(layer, b, t)[0], np.logaddexp(0, x))  # no overflow at ±60
    layer, b, t = make_layer('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', [x[:, 1:4]])
    np.testing.assert_allclose(run_forward(layer, b, t)[0], 2.0 ** (1 + 0.5 * x[:, 1:4]))
    y = np.array([[1.0, 10.0, 100.0]])
    layer, b, t = make_layer('type: "Log" log_param { base: 10 scale: 2 shift: 0 }', [y])
    np.testing.assert_allclose(run_forward(layer, b, t)[0], np.log10(2 * y))
    layer, b, t = make_layer('type: "Threshold" threshold_param { threshold: 0 }', [x])
    np.testing.assert_array_equal(run_forward(layer, b, t)[0], [[0, 0, 0, 1, 1]])  # strictly greater
    with pytest.raises(FormatError, match="base"):
        make_layer('type: "Exp" exp_param { base: -2 }', [x])


# -------------------------------------------------------- shape layers ----


@pytest.mark.parametrize("text,shapes", [
    ('type: "Bias" bias_param { filler { type: "gaussian" } }', [(2, 3, 4)]),
    ('type: "Bias" bias_param { axis: 0 num_axes: 2 filler { type: "gaussian" } }', [(2, 3, 4)]),
    ('type: "Bias" bias_param { num_axes: -1 filler { type: "gaussian" } }', [(2, 3, 4)]),
    ('type: "Bias" bias_param { num_axes: 0 filler { type: "gaussian" } }', [(2, 3)]),
    ('type: "Bias"', [(2, 3, 4), (3, 4)]),
    ('type: "Bias" bias_param { axis: 2 }', [(2, 3, 4), (4,)]),
    ('type: "Tile" tile_param { tiles: 3 }', [(2, 3, 2)]),
    ('type: "Tile" tile_param { axis: -1 tiles: 2 }', [(2, 3, 2)]),
    ('type: "Tile" tile_param { axis: 0 tiles: 2 }', [(2, 3)]),
    ('type: "Reduction"', [(2, 3, 4)]),
    ('type: "Reduction" reduction_param { operation: ASUM axis: 1 coeff: -2 }', [(2, 3, 4)]),
    ('type: "Reduction" reduction_param { operation: SUMSQ axis: 2 }', [(2, 3, 4)]),
    ('type: "Reduction" reduction_param { operation: MEAN axis: -1 coeff: 0.5 }', [(2, 3, 4)]),
    ('type: "Reduction" reduction_param { operation: SUM axis: 1 coeff: 3 }', [(2, 3, 4)]),
    ('type: "Crop"', [(2, 3, 6, 5), (2, 3, 4, 3)]),
    ('type: "Crop" crop_param { offset: 1 }', [(2, 3, 6, 5), (2, 3, 4, 3)]),
    ('type: "Crop" crop_param { axis: 1 offset: 0 offset: 2 offset: 1 }', [(2, 3, 6, 5), (1, 1, 4, 3)]),
])
def test_shape_layer_gradients(text, shapes):
    values = [rand(*s) for s in shapes]
    if "ASUM" in text:
        values[0][np.abs(values[0]) < 1e-3] = 0.5
    layer, b, t = make_layer(text, values)
    check_gradients(layer, b, t, check_bottoms=[0] if "Crop" in text else None)


def test_shape_layer_values():
    x = np.arange(6.0).reshape(2, 3)
    layer, b, t = make_layer('type: "Tile" tile_param { axis: 0 tiles: 2 }', [x])
    np.testing.assert_array_equal(run_forward(layer, b, t)[0], np.tile(x, (2, 1)))
    layer, b, t = make_layer('type: "Tile" tile_param { tiles: 2 }', [x])
    np.testing.assert_array_equal(run_forward(layer, b, t)[0], x[:, [0, 1, 2, 0, 1, 2]])
    y = np.array([[1.0, -2.0], [3.0, -4.0]])
    for op, want in [("SUM", [-1, -1]), ("ASUM", [3, 7]), ("SUMSQ", [5, 25]), ("MEAN", [-0.5, -0.5])]:
        layer, b, t = make_layer(f'type: "Reduction" reduction_param {{ operation: {op} axis: 1 coeff: 2 }}', [y])
        np.testing.assert_allclose(run_forward(layer, b, t)[0], 2 * np.array(want))
    layer, b, t = make_layer('type: "Reduction"', [y])
    assert t[0].shape == () and float(run_forward(layer, b, t)[0]) == -2.0
    a = rand(1, 2, 5, 5)
    layer, b, t = make_layer('type: "Crop" crop_param { axis: 2 offset: 1 offset: 2 }', [a, rand(1, 1, 3, 2)])
    np.testing.assert_array_equal(run_forward(layer, b, t)[0], a[:, :, 1:4, 2:4])
    with pytest.raises(FormatError, match="exceeds"):
        make_layer('type: "Crop" crop_param { offset: 3 }', [a, rand(1, 1, 3, 3)])
    layer, b, t = make_layer('type: "Bias"', [x, np.array([10.0, 20.0, 30.0])])
    np.testing.assert_array_equal(run_forward(layer, b, t)[0], x + [10, 20, 30])


# ----------------------------------------------------------- MVN / Embed ----


@pytest.mark.parametrize("params", ["", "across_channels: true", "normalize_variance: false",
                                    "normalize_variance: false across_channels: true", "eps: 0.001"])
def test_mvn_gradients_and_values(params):
    x = rand(2, 3, 4, 5) * 3 + 1
    layer, b, t = make_layer(f'type: "MVN" mvn_param {{ {params} }}', [x])
    (y,) = run_forward(layer, b, t)
    axes = (1, 2, 3) if "across" in params else (2, 3)
    mean = x.mean(axis=axes, keepdims=True)
    want = x - mean
    if "normalize_variance: false" not in params:
        eps = 0.001 if "eps" in params else 1e-9
        want = want / (x.std(axis=axes, keepdims=True) + eps)
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)
    # Caffe's backward treats eps as 0: exact to eps/std (1e-3 here for the eps: 0.001 case)
    check_gradients(layer, b, t, tol=2e-3 if "eps" in params else 1e-5)


@pytest.mark.parametrize("params", ["", "bias_term: false"])
def test_embed_gradients_and_values(params):
    idx = np.array([[0.0, 3.0, 3.0], [4.0, 1.0, 0.0]])
    text = (f'type: "Embed" embed_param {{ num_output: 3 input_dim: 5 {params} weight_filler {{ type: "gaussian" }} '
            'bias_filler { type: "gaussian" } }')
    layer, b, t = make_layer(text, [idx])
    (y,) = run_forward(layer, b, t)
    assert y.shape == (2, 3, 3)
    want = layer.blobs[0].data[idx.astype(int)] + (layer.blobs[1].data if not params else 0)
    np.testing.assert_allclose(y, want)
    check_gradients(layer, b, t, check_bottoms=[])
    with pytest.raises(FormatError, match="index 5"):
        run_forward(layer, make_layer(text, [np.array([5.0])])[1], t)
    with pytest.raises(FormatError, match="index 1.5"):
        run_forward(layer, make_layer(text, [np.array([1.5])])[1], t)


def test_reduction_mean_of_a_scalar_top_is_caffes():
    x = rand(3, 4)
    layer, b, t = make_layer('type: "Reduction" reduction_param { operation: MEAN }', [x], phase=TEST)
    assert float(run_forward(layer, b, t)[0]) == pytest.approx(x.mean())
    assert math.isfinite(float(t[0].data))


# ------------------------------------------- the rest of caffe.proto's layers ----


@pytest.mark.parametrize("text,values", [
    ('type: "Clip" clip_param { min: -0.5 max: 0.7 }', lambda: [rand(3, 4)]),
    ('type: "Swish"', lambda: [rand(3, 4)]),
    ('type: "Swish" swish_param { beta: 2.5 }', lambda: [rand(3, 4)]),
    ('type: "BatchReindex"', lambda: [rand(3, 2, 2), np.array([2.0, 0, 2, 1, 2])]),
    ('type: "LSTMUnit"', lambda: [rand(1, 2, 3), rand(1, 2, 12), np.array([[1.0, 0.0]])]),
    ('type: "Im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 }', lambda: [rand(2, 2, 5, 6)]),
    ('type: "Im2col" convolution_param { kernel_h: 2 kernel_w: 3 dilation: 2 }', lambda: [rand(1, 3, 6, 7)]),
])
def test_more_proto_layers_gradients(text, values):
    vals = values()
    vals[0][np.abs(np.abs(vals[0]) - 0.6) < 0.11] = 0.1  # away from Clip's edges
    n_tops = 2 if "LSTMUnit" in text else 1
    layer, b, t = make_layer(text, vals, n_tops=n_tops)
    check_gradients(layer, b, t, check_bottoms=[0, 1] if "LSTMUnit" in text else [0])


def test_more_proto_layer_values():
    x = np.array([[-2.0, -0.5, 0.3, 0.7, 2.0]])
    layer, b, t = make_layer('type: "Clip" clip_param { min: -0.5 max: 0.7 }', [x])
    np.testing.assert_array_equal(run_forward(layer, b, t)[0], np.clip(x, -0.5, float(np.float32(0.7))))  # a float field
    layer, b, t = make_layer('type: "Swish" swish_param { beta: 2 }', [x])
    np.testing.assert_allclose(run_forward(layer, b, t)[0], x / (1 + np.exp(-2 * x)))
    rows = rand(3, 2)
    layer, b, t = make_layer('type: "BatchReindex"', [rows, np.array([2.0, 0, 2])])
    np.testing.assert_array_equal(run_forward(layer, b, t)[0], rows[[2, 0, 2]])
    with pytest.raises(FormatError, match="index 3"):
        run_forward(layer, make_layer('type: "BatchReindex"', [rows, np.array([3.0])])[1], t)
    layer, b, t = make_layer('type: "Filter"', [rows, rand(3, 4), np.array([1.0, 0, 1])], n_tops=2)
    a, c = run_forward(layer, b, t)
    np.testing.assert_array_equal(a, rows[[0, 2]])
    assert c.shape == (2, 4)
    check_gradients(layer, b, t, check_bottoms=[0, 1])
    b[2].data[...] = [0, 0, 1]
    assert run_forward(layer, b, t)[0].shape == (1, 2)   # top shapes follow the selector
    b[2].data[...] = 0
    assert run_forward(layer, b, t)[0].shape == (0, 2)   # nothing selected: empty tops, zero gradients
    t[0].diff, t[1].diff = np.zeros((0, 2)), np.zeros((0, 4))
    layer.backward(t, [True, True, False], b)
    assert (b[0].diff == 0).all() and b[0].diff.shape == (3, 2)
    layer, b, t = make_layer('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }', [])
    assert layer.blobs[0].shape == (2, 3) and (run_forward(layer, b, t)[0] == 0).all()
    layer.blobs[0].data[...] = rand(2, 3)
    check_gradients(layer, b, t)
    x = rand(2, 3, 4, 5)
    layer, b, t = make_layer('type: "Im2col" convolution_param { kernel_size: 2 stride: 2 }', [x])
    (cols,) = run_forward(layer, b, t)
    assert cols.shape == (2, 12, 2, 2)
    np.testing.assert_array_equal(cols[1, :, 1, 0], x[1, :, 2:4, 0:2].reshape(-1))  # rows (c, i, j)


def test_lstm_unit_is_one_lstm_step():
    c0, gates, cont = rand(1, 2, 3), rand(1, 2, 12), np.array([[1.0, 0.0]])
    layer, b, t = make_layer('type: "LSTMUnit"', [c0, gates, cont], n_tops=2)
    c, h = run_forward(layer, b, t)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, f, o, g = sig(gates[..., :3]), sig(gates[..., 3:6]), sig(gates[..., 6:9]), np.tanh(gates[..., 9:])
    want_c = cont[..., None] * f * c0 + i * g
    np.testing.assert_allclose(c, want_c)
    np.testing.assert_allclose(h, o * np.tanh(want_c))


def test_embed_row_sums_match_a_scatter_add():
    from trainer.layers.embed import row_sums
    rng = np.random.default_rng(0)
    index = rng.integers(0, 7, 50)
    rows = rng.standard_normal((50, 3)).astype(np.float32)
    want = np.zeros((9, 3), np.float32)
    np.add.at(want, index, rows)
    got = np.zeros((9, 3), np.float32)
    keys, totals = row_sums(np, rows, index)
    assert len(set(keys.tolist())) == len(keys)     # distinct: a plain indexed add is safe
    got[keys] += totals
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert row_sums(np, rows[:0], index[:0])[1].shape == (0, 3)
