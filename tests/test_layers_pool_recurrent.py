"""SPP, stochastic pooling, RNN and LSTM: gradient checks and values by hand."""

from __future__ import annotations


import numpy as np
import pytest

from datakit.errors import FormatError
from tests.test_layers import TEST, check_gradients, make_layer, rand, run_forward

# ------------------------------------------------------ pooling: SPP, STOCHASTIC ----


def _fixed_draws(layer, seed=3):
    """Make the layer's uniforms repeat on every forward (a finite-difference check needs that)."""
    forward = layer.forward

    def again(bottoms, tops):
        layer.rng = np.random.default_rng(seed)
        for inner in getattr(layer, "levels", []):
            inner[0].rng = layer.rng
        forward(bottoms, tops)
    layer.forward = again
    return layer


@pytest.mark.parametrize("params,phase", [
    ("kernel_size: 3 stride: 2", "TRAIN"), ("kernel_size: 2 stride: 2", "TRAIN"),
    ("kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2", "TRAIN"),
    ("kernel_size: 3 stride: 2", "TEST"), ("kernel_size: 2 stride: 1", "TEST"),
])
def test_stochastic_pooling_gradients(params, phase):
    from tests.test_layers import TRAIN
    x = np.abs(rand(2, 2, 7, 6)) + 0.1
    layer, b, t = make_layer(f'type: "Pooling" pooling_param {{ pool: STOCHASTIC {params} }}', [x],
                             phase=TRAIN if phase == "TRAIN" else TEST)
    check_gradients(_fixed_draws(layer), b, t)


def test_stochastic_pooling_values():
    from tests.test_layers import TRAIN
    x = np.array([[[[1.0, 3.0], [0.0, 4.0]]]])
    layer, b, t = make_layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }', [x],
                             phase=TEST)
    assert run_forward(layer, b, t)[0].item() == pytest.approx(26 / 8)  # Σx² / Σx
    layer, b, t = make_layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }', [x],
                             phase=TRAIN)
    picks = [run_forward(layer, b, t)[0].item() for _ in range(4000)]
    values, counts = np.unique(picks, return_counts=True)
    assert set(values) == {1.0, 3.0, 4.0}  # never the zero
    np.testing.assert_allclose(counts / 4000, [1 / 8, 3 / 8, 4 / 8], atol=0.03)
    t[0].diff = np.array([[[[2.0]]]])
    layer.backward(t, [True], b)
    chosen = list(x.reshape(-1)).index(picks[-1])  # the last forward's pick gets the whole gradient
    assert b[0].diff.sum() == 2.0 and b[0].diff.reshape(-1)[chosen] == 2.0


@pytest.mark.parametrize("params,shape", [
    ("pyramid_height: 1", (2, 3, 5, 4)), ("pyramid_height: 2", (2, 3, 5, 5)),
    ("pyramid_height: 3 pool: AVE", (1, 2, 9, 7)), ("pyramid_height: 3", (2, 2, 8, 8)),
    ("pyramid_height: 2 pool: STOCHASTIC", (1, 2, 6, 5)),
])
def test_spp_gradients_and_shape(params, shape):
    x = rand(*shape) + (3 if "STOCHASTIC" in params else 0)
    layer, b, t = make_layer(f'type: "SPP" spp_param {{ {params} }}', [x])
    height = int(params.split()[1])
    n, c = shape[:2]
    assert t[0].shape == ((n, c, 1, 1) if height == 1 else (n, c * sum(4 ** i for i in range(height))))
    check_gradients(_fixed_draws(layer), b, t)


def test_spp_levels_are_caffes_bins():
    x = rand(1, 1, 5, 5)
    layer, b, t = make_layer('type: "SPP" spp_param { pyramid_height: 2 }', [x])
    (y,) = run_forward(layer, b, t)
    assert y[0, 0] == pytest.approx(x.max())
    # level 1: kernel 3, pad (3·2 − 5 + 1) / 2 = 1: bins cover rows -1..1 and 2..4
    np.testing.assert_allclose(y[0, 1:5], [x[0, 0, :2, :2].max(), x[0, 0, :2, 2:].max(),
                                           x[0, 0, 2:, :2].max(), x[0, 0, 2:, 2:].max()])
    assert y.shape == (1, 1 + 4)
    # level 2 would take kernel 2 and pad (8 − 5 + 1) / 2 = 2: Caffe refuses a pad as large as the kernel
    with pytest.raises(FormatError, match="level 2 .*pad"):
        make_layer('type: "SPP" spp_param { pyramid_height: 3 }', [x])


# ------------------------------------------------------------ RNN / LSTM ----

RECURRENT = 'recurrent_param {{ num_output: 3 {extra} weight_filler {{ type: "uniform" min: -0.6 max: 0.6 }} ' \
            'bias_filler {{ type: "uniform" min: -0.5 max: 0.5 }} }}'


def _sequences(static: bool, exposed: int, t=4, n=2):
    cont = np.ones((t, n))
    cont[0] = 0          # every sequence starts at t = 0 (so a carried state cannot matter)
    cont[2, 1] = 0       # ... and sample 1 starts a new one at t = 2
    values = [rand(t, n, 2, 2), cont]
    if static:
        values.append(rand(n, 3))
    values += [rand(1, n, 3) for _ in range(exposed)]
    return values


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("static,expose", [(False, False), (True, False), (False, True), (True, True)])
def test_recurrent_gradients(kind, static, expose):
    n_state = (2 if kind == "LSTM" else 1) if expose else 0
    values = _sequences(static, n_state)
    if expose:
        values[1][0] = [1, 0]   # exposed h_0 (and c_0) feed sample 0
    text = f'type: "{kind}" ' + RECURRENT.format(extra="expose_hidden: true" if expose else "")
    layer, b, t = make_layer(text, values, n_tops=1 + n_state)
    assert t[0].shape == (4, 2, 3) and all(x.shape == (1, 2, 3) for x in t[1:])
    names = {"LSTM": [(12, 4), (12,)] + [(12, 3)] * static + [(12, 3)],
             "RNN": [(3, 4), (3,)] + [(3, 3)] * static + [(3, 3), (3, 3), (3,)]}[kind]
    assert [blob.shape for blob in layer.blobs] == names
    check_gradients(layer, b, t, check_bottoms=[i for i in range(len(values)) if i != 1])


def _lstm_by_hand(x, cont, w_xc, b_c, w_hc, h, c):
    H = h.shape[1]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    hs = []
    for t in range(x.shape[0]):
        g = x[t].reshape(x.shape[1], -1) @ w_xc.T + b_c + (cont[t][:, None] * h) @ w_hc.T
        i, f, o, gg = sig(g[:, :H]), sig(g[:, H:2 * H]), sig(g[:, 2 * H:3 * H]), np.tanh(g[:, 3 * H:])
        c = cont[t][:, None] * f * c + i * gg
        h = o * np.tanh(c)
        hs.append(h)
    return np.stack(hs), h, c


def test_lstm_values_and_state_carried_between_forwards():
    x, cont = _sequences(False, 0)
    layer, b, t = make_layer('type: "LSTM" ' + RECURRENT.format(extra=""), [x, cont])
    w_xc, b_c, w_hc = (blob.data for blob in layer.blobs)
    zero = np.zeros((2, 3))
    want, h_t, c_t = _lstm_by_hand(x, cont, w_xc, b_c, w_hc, zero, zero)
    np.testing.assert_allclose(run_forward(layer, b, t)[0], want, rtol=1e-12)
    # The next forward continues from the last state where cont says so (Caffe without expose_hidden).
    b[1].data[...] = 1.0
    again, _, _ = _lstm_by_hand(x, np.ones((4, 2)), w_xc, b_c, w_hc, h_t, c_t)
    np.testing.assert_allclose(run_forward(layer, b, t)[0], again, rtol=1e-12)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_carried_state_is_saved_for_resume(kind):
    import json
    x, cont = _sequences(False, 0)
    cont[...] = 1.0  # nothing resets: the second forward depends on the first's final state
    text = f'type: "{kind}" ' + RECURRENT.format(extra="")
    layer, b, t = make_layer(text, [x, cont])
    run_forward(layer, b, t)
    state = json.loads(json.dumps(layer.get_state()))   # through the sidecar's JSON
    (second,) = run_forward(layer, b, t)
    fresh, fb, ft = make_layer(text, [x, cont])          # same seed: same weights
    fresh.set_state(state)
    np.testing.assert_array_equal(run_forward(fresh, fb, ft)[0], second)
    assert make_layer(text, [x, cont])[0].get_state() == {}


def test_rnn_values_with_exposed_state():
    x, cont, h0 = _sequences(False, 1)
    cont[0] = 1
    layer, b, t = make_layer('type: "RNN" ' + RECURRENT.format(extra="expose_hidden: true"), [x, cont, h0], n_tops=2)
    w_xh, b_h, w_hh, w_ho, b_o = (blob.data for blob in layer.blobs)
    h, outs = h0[0], []
    for step in range(4):
        h = np.tanh(x[step].reshape(2, -1) @ w_xh.T + b_h + (cont[step][:, None] * h) @ w_hh.T)
        outs.append(np.tanh(h @ w_ho.T + b_o))
    o, h_t = run_forward(layer, b, t)
    np.testing.assert_allclose(o, np.stack(outs), rtol=1e-12)
    np.testing.assert_allclose(h_t[0], h, rtol=1e-12)
    with pytest.raises(FormatError, match="takes x, cont"):
        make_layer('type: "RNN" ' + RECURRENT.format(extra="expose_hidden: true"), [x, cont], n_tops=2)
