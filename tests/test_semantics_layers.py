"""Facts of ../shared/caffe-semantics.md that the layer tests did not pin down by hand: AVE pooling's
divisor where a window runs past H + pad, FLOOR vs CEIL, global pooling's values, the loss
normalization modes on spatial labels, and the fan rules of xavier/msra. Every expectation is worked
out here from Caffe's formula; each test names the slip it would catch. Pooling runs on the compiled
loops and on the NumPy twins (which the CuPy stand-in, tests/strict_xp.py, also runs)."""

from __future__ import annotations

import numpy as np
import pytest

from datakit.formats import caffe_pb2
from tests.test_layers import make_layer, run_forward
from trainer import kernels
from trainer.fillers import fill


@pytest.fixture(params=["compiled", "numpy"])
def kernel_path(request):
    if request.param == "compiled" and not kernels.compiled_available():
        pytest.skip("numba is not importable (or DATAKIT_COMPILED=0)")
    prev = kernels.use_compiled(request.param == "compiled")
    yield request.param
    kernels.use_compiled(prev)


def test_ave_pooling_window_past_h_plus_pad_divides_by_the_part_inside_it(kernel_path):
    """4x4, kernel 3, stride 2, pad 1: out 3 (ceil(3/2)+1; window 2 starts at 3 < 4+1, kept).
    Rows of the windows: [-1,2) [1,4) [3,6) -> hend = min(hstart+3, 5): divisors 3, 3, 2 per axis.
    The corner window holds x[3,3] = 15 only, over 2x2 = 4: 3.75. Dividing by the clipped window
    (15/1) or the whole kernel (15/9) fails, and so does a FLOOR size (2x2)."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    for dtype in (np.float64, np.float32):
        layer, b, t = make_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }',
                                 [x.astype(dtype)])
        (y,) = run_forward(layer, b, t)
        expected = np.array([[(0 + 1 + 4 + 5) / 9, (1 + 2 + 3 + 5 + 6 + 7) / 9, (3 + 7) / 6],
                             [(4 + 5 + 8 + 9 + 12 + 13) / 9, (5 + 6 + 7 + 9 + 10 + 11 + 13 + 14 + 15) / 9,
                              (7 + 11 + 15) / 6],
                             [(12 + 13) / 6, (13 + 14 + 15) / 6, 15 / 4]])
        np.testing.assert_allclose(y[0, 0], expected, rtol=1e-12)
        # backward: each output's gradient spread over its clipped window, divided by the same divisor
        t[0].diff = np.zeros_like(y)
        t[0].diff[0, 0, 2, 2] = 1.0
        layer.backward(t, [True], b)
        dx = np.zeros((4, 4))
        dx[3, 3] = 1 / 4
        np.testing.assert_allclose(b[0].diff[0, 0], dx, rtol=1e-12)


def test_floor_round_mode_and_the_pad_rule(kernel_path):
    """FLOOR: floor((4+2-3)/2)+1 = 2 (CEIL gives 3); the second window covers rows/cols 1..3 fully: /9.
    And CEIL with pad 1 on 5 rows, kernel 2, stride 2: ceil(5/2)+1 = 4, but (4-1)*2 = 6 >= 5+1, so
    window 3 would start in the right padding: dropped -> 3 (forgetting `out -= 1` gives 4)."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    layer, b, t = make_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 '
                             'round_mode: FLOOR }', [x])
    (y,) = run_forward(layer, b, t)
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0, 1, 1] == pytest.approx(x[0, 0, 1:4, 1:4].sum() / 9)
    x5 = np.random.default_rng(0).standard_normal((1, 2, 5, 5))
    layer, b, t = make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }', [x5])
    (y,) = run_forward(layer, b, t)
    assert y.shape == (1, 2, 3, 3)
    # rows of the windows: [-1,1) [1,3) [3,5): the last one is the image's last two rows
    np.testing.assert_array_equal(y[0, :, 2, 2], x5[0, :, 3:5, 3:5].max(axis=(1, 2)))
    np.testing.assert_array_equal(y[0, :, 0, 0], x5[0, :, 0, 0])


@pytest.mark.parametrize("pool", ["AVE", "MAX"])
def test_global_pooling_is_the_whole_map(kernel_path, pool):
    """global_pooling: one output per channel, the mean or max of the whole H x W (not a 1-wide kernel)."""
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 7))
    layer, b, t = make_layer(f'type: "Pooling" pooling_param {{ pool: {pool} global_pooling: true }}', [x])
    (y,) = run_forward(layer, b, t)
    assert y.shape == (2, 3, 1, 1)
    want = x.mean(axis=(2, 3)) if pool == "AVE" else x.max(axis=(2, 3))
    np.testing.assert_allclose(y[:, :, 0, 0], want, rtol=1e-12)


# ------------------------------------------------------------------ loss normalization ----

SCORES = np.array([[[1.0, 0.0], [2.0, 1.0], [3.0, -1.0]],
                   [[0.0, 2.0], [0.0, 0.5], [0.0, 0.0]]])   # N=2, C=3, spatial 2 (inner = 2)
LABELS = np.array([[2.0, 0.0], [1.0, 5.0]])                  # 5 is the ignore_label below


def _nll_sum(ignore=None):
    p = np.exp(SCORES) / np.exp(SCORES).sum(axis=1, keepdims=True)
    total = 0.0
    for n in range(2):
        for s in range(2):
            if LABELS[n, s] != ignore:
                total -= np.log(p[n, int(LABELS[n, s]), s])
    return total


@pytest.mark.parametrize("mode,divisor", [("VALID", 3), ("FULL", 4), ("BATCH_SIZE", 2), ("NONE", 1)])
def test_softmax_loss_normalization_modes_on_spatial_labels(mode, divisor):
    """Caffe's GetNormalizer with outer N=2, inner 2, one ignored label: VALID 3 (non-ignored), FULL 4
    (every position, ignored ones too), BATCH_SIZE 2 (N only, not N x inner), NONE 1. The gradient
    is scaled by the same divisor."""
    text = f'type: "SoftmaxWithLoss" loss_param {{ ignore_label: 5 normalization: {mode} }}'
    layer, b, t = make_layer(text, [SCORES, LABELS])
    (loss,) = run_forward(layer, b, t)
    assert float(loss) == pytest.approx(_nll_sum(ignore=5) / divisor, rel=1e-12)
    t[0].diff = np.array(1.0)
    layer.backward(t, [True, False], b)
    p = np.exp(SCORES) / np.exp(SCORES).sum(axis=1, keepdims=True)
    assert b[0].diff[0, 2, 0] == pytest.approx((p[0, 2, 0] - 1) / divisor, rel=1e-12)
    np.testing.assert_array_equal(b[0].diff[1, :, 1], 0.0)   # the ignored position gets no gradient


def test_softmax_loss_valid_without_ignore_label_divides_by_every_position():
    layer, b, t = make_layer('type: "SoftmaxWithLoss"', [SCORES, np.where(LABELS == 5, 2.0, LABELS)])
    (loss,) = run_forward(layer, b, t)
    p = np.exp(SCORES) / np.exp(SCORES).sum(axis=1, keepdims=True)
    assert float(loss) == pytest.approx(-(np.log(p[0, 2, 0]) + np.log(p[0, 0, 1]) + np.log(p[1, 1, 0])
                                          + np.log(p[1, 2, 1])) / 4, rel=1e-12)


def test_accuracy_over_spatial_positions_skips_the_ignored_ones():
    """Accuracy on N x C x S: one sample per (n, s), ignored labels out of the count (3 here).
    (0,0): label 2 scores 3, the best. (0,1): label 0 scores 0, class 1 scores 1: second. (1,0): all
    three score 0: the two ties count against it, third. So 1/3, 2/3, 3/3 for top_k 1, 2, 3; counting
    ties for the label (>) would give 3/3 at top_k 1, dividing by N x S 1/4."""
    labels = np.array([[2.0, 0.0], [0.0, 5.0]])
    for top_k, want in ((1, 1 / 3), (2, 2 / 3), (3, 3 / 3)):
        layer, b, t = make_layer(f'type: "Accuracy" accuracy_param {{ top_k: {top_k} ignore_label: 5 }}',
                                 [SCORES, labels], phase=caffe_pb2.TEST)
        (acc,) = run_forward(layer, b, t)
        assert float(acc) == pytest.approx(want), top_k


# ------------------------------------------------------------------------------ fillers ----

@pytest.mark.parametrize("norm,n", [(None, 32 * 9), ("FAN_IN", 32 * 9), ("FAN_OUT", 64 * 9),
                                    ("AVERAGE", (32 * 9 + 64 * 9) / 2)])
def test_xavier_bound_follows_variance_norm(norm, n):
    """xavier on a [64, 32, 3, 3] blob: uniform in ±sqrt(3/n), n = count/shape[0] = 288 (FAN_IN, the
    default), count/shape[1] = 576 (FAN_OUT), their mean 432 (AVERAGE). Swapping the fans, or AVERAGE
    as a sum, puts the largest value outside (or well inside) the bound."""
    f = caffe_pb2.FillerParameter(type="xavier")
    if norm:
        f.variance_norm = getattr(caffe_pb2.FillerParameter, norm)
    w = fill((64, 32, 3, 3), f, np.random.default_rng(3))
    bound = np.sqrt(3 / n)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert w.mean() == pytest.approx(0, abs=0.01 * bound)


def test_msra_std_on_an_inner_product_blob_uses_its_inputs():
    """msra on InnerProduct's [num_output=50, K=400] weights: std sqrt(2/400) (fan_in = K), not sqrt(2/50)."""
    w = fill((50, 400), caffe_pb2.FillerParameter(type="msra"), np.random.default_rng(4))
    assert w.std() == pytest.approx(np.sqrt(2 / 400), rel=0.03)
    assert w.mean() == pytest.approx(0, abs=0.003)


def test_default_fillers_are_constant_zero():
    """FillerParameter's defaults: type constant, value 0, for weights and bias alike (Caffe's)."""
    layer, _, _ = make_layer('type: "InnerProduct" inner_product_param { num_output: 3 }', [np.ones((2, 4))])
    assert layer.blobs[0].data.shape == (3, 4) and not layer.blobs[0].data.any() and not layer.blobs[1].data.any()


# -------------------------------------------------------------------------- convolution ----

def test_dilated_strided_convolution_shape_and_values():
    """out = floor((9 + 2*1 - (2*(3-1)+1)) / 2) + 1 = 4 (a `dilation*kernel` extent gives 3); each output
    sums taps 2 apart from row/col 2*o - 1 (pad 1), the group's own input channels only (group 2)."""
    x = np.random.default_rng(6).standard_normal((1, 4, 9, 9))
    layer, b, t = make_layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 dilation: 2 '
                             'stride: 2 pad: 1 group: 2 weight_filler { type: "gaussian" } '
                             'bias_filler { type: "gaussian" } }', [x])
    assert layer.blobs[0].data.shape == (4, 2, 3, 3)   # [num_output, channels/group, kh, kw]
    (y,) = run_forward(layer, b, t)
    assert y.shape == (1, 4, 4, 4)
    w, bias = layer.blobs[0].data, layer.blobs[1].data
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for m in range(4):
        g = m // 2                       # outputs 0-1 see inputs 0-1, outputs 2-3 inputs 2-3
        for oy in range(4):
            for ox in range(4):
                patch = xp[0, 2 * g:2 * g + 2, 2 * oy:2 * oy + 5:2, 2 * ox:2 * ox + 5:2]
                assert y[0, m, oy, ox] == pytest.approx((patch * w[m]).sum() + bias[m], rel=1e-10)


# ------------------------------------------------------------------------ inner product ----

def test_inner_product_transpose_and_axis_values():
    """transpose: true stores W as [K, num_output] and computes x W (reading it as [num_output, K] and
    computing x Wᵀ would scramble the outputs); axis 2 keeps the first two axes and flattens the rest."""
    x = np.random.default_rng(8).standard_normal((2, 3, 4, 5))
    layer, b, t = make_layer('type: "InnerProduct" inner_product_param { num_output: 6 transpose: true '
                             'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }', [x])
    w, bias = layer.blobs[0].data, layer.blobs[1].data
    assert w.shape == (60, 6)
    (y,) = run_forward(layer, b, t)
    np.testing.assert_allclose(y, x.reshape(2, 60) @ w + bias, rtol=1e-12)
    layer, b, t = make_layer('type: "InnerProduct" inner_product_param { num_output: 6 axis: 2 '
                             'weight_filler { type: "gaussian" } }', [x])
    w = layer.blobs[0].data
    assert w.shape == (6, 20)
    (y,) = run_forward(layer, b, t)
    assert y.shape == (2, 3, 6)
    np.testing.assert_allclose(y, x.reshape(2, 3, 20) @ w.T, rtol=1e-12)


def test_the_last_window_rule_applies_to_an_unpadded_axis_when_the_other_is_padded(kernel_path):
    """Caffe tests `pad_h || pad_w`: pad_w 1 turns the rule on for the rows too. 9 rows, kernel 2,
    stride 3, pad_h 0: ceil(7/3)+1 = 4, and (4-1)*3 = 9 >= 9+0, so the 4th row window (starting past
    the last row) is dropped: 3 rows. Checking each axis's own pad kept it and refused the layer."""
    x = np.random.default_rng(9).standard_normal((1, 2, 9, 4))
    text = ('type: "Pooling" pooling_param { pool: MAX kernel_h: 2 kernel_w: 2 stride_h: 3 stride_w: 1 '
            'pad_h: 0 pad_w: 1 }')
    layer, b, t = make_layer(text, [x])
    (y,) = run_forward(layer, b, t)
    assert y.shape == (1, 2, 3, 5)  # columns: ceil((4+2-2)/1)+1 = 5, and 4*1 < 4+1 keeps the 5th
    xp = np.pad(x, ((0, 0), (0, 0), (0, 0), (1, 1)), constant_values=-np.inf)
    for oy in range(3):
        for ox in range(5):
            np.testing.assert_array_equal(y[0, :, oy, ox], xp[0, :, 3 * oy:3 * oy + 2, ox:ox + 2].max(axis=(1, 2)))


# ------------------------------------------------------------ the CuPy path (strict_xp) ----

POOL_NET = '''
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 9 dim: 4 } } }
layer { name: "ave" type: "Pooling" bottom: "x" top: "ave" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "max" type: "Pooling" bottom: "x" top: "max" pooling_param { pool: MAX kernel_h: 2 kernel_w: 2
  stride_h: 3 stride_w: 1 pad_h: 0 pad_w: 1 } }
'''


@pytest.mark.parametrize("device", ["numpy", "strict_xp"])
def test_pooling_edges_on_the_device_path(device):
    """The two edge rules above through a Net on the CuPy path (the RawKernel launches, their size
    arguments and the layer's sizes): AVE's corner divisor and the pad_h || pad_w window drop."""
    from google.protobuf import text_format

    from tests import strict_xp
    from trainer.net import Net
    x = np.random.default_rng(10).standard_normal((1, 2, 9, 4))
    import contextlib
    strict_xp.launches.clear()
    ctx = strict_xp.installed() if device == "strict_xp" else contextlib.nullcontext(np)
    with ctx as xp:
        net = Net(text_format.Parse(POOL_NET, caffe_pb2.NetParameter()), caffe_pb2.TEST, xp=xp, seed=0,
                  dtype=np.float64)
        net.blobs["x"].data[...] = xp.asarray(x)
        net.forward()
        ave = np.array(strict_xp.asnumpy(net.blobs["ave"].data)) if device == "strict_xp" else net.blobs["ave"].data
        mx = np.array(strict_xp.asnumpy(net.blobs["max"].data)) if device == "strict_xp" else net.blobs["max"].data
    if device == "strict_xp":  # the RawKernels ran (their launches checked against the CUDA signatures)
        assert strict_xp.launches["ave_pool_fwd"] == 1 and strict_xp.launches["max_pool_fwd"] == 1
    # AVE 9x4, kernel 3, stride 2, pad 1: out 5x3 (ceil(8/2)+1 = 5, 4*2 = 8 < 10 kept; ceil(3/2)+1 = 3, 2*2 < 5)
    assert ave.shape == (1, 2, 5, 3) and mx.shape == (1, 2, 3, 5)
    # the last row window [7, 10) -> hend min(10, 10) = 10: 3 rows counted, 2 (rows 7, 8) summed;
    # the last column window [3, 6) -> wend min(6, 5) = 5: 2 counted, 1 (col 3) summed
    np.testing.assert_allclose(ave[0, :, 4, 2], x[0, :, 7:9, 3].sum(axis=1) / 6, rtol=1e-12)
    np.testing.assert_allclose(ave[0, :, 0, 0], x[0, :, 0:2, 0:2].sum(axis=(1, 2)) / 9, rtol=1e-12)
    np.testing.assert_array_equal(mx[0, :, 2, 4], x[0, :, 6:8, 3].max(axis=1))


# ------------------------------------------------------------------ a real Caffe log ----

def test_caffenet_shapes_equal_the_top_shapes_of_a_real_caffe_log(shared_data):
    """The netbase run's log (2014 Caffe) prints each layer's top shape while building its TRAIN net:
    conv1 96x55x55 (11x11 stride 4 on 227), pool1 27, conv2 (pad 2, group 2) 27, pool2 13, conv3-5 13,
    pool5 6. Our net, built from the same (upgraded) prototxt with an Input in place of its Data layer
    and cut before fc6, gives each of those layers the same shape."""
    import gzip
    import re

    from google.protobuf import text_format

    from datakit.formats.prototxt import read_net
    from trainer.net import Net
    run = shared_data / "caffe_logs" / "netbase"
    with gzip.open(run / "catlog.oMANUAL.gz", "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    logged: dict[str, tuple[int, ...]] = {}
    layer = None
    for line in text.splitlines():
        m = re.search(r"Creating Layer (\S+)$", line)
        if m:
            if m[1] == "data" and logged:
                break  # the TEST net starts
            layer = m[1]
            continue
        m = re.search(r"Top shape: ([\d ]+)$", line)
        if m and layer and layer not in logged:
            logged[layer] = tuple(int(v) for v in m[1].split())
    param = read_net(run / "imagenet_train.prototxt")
    cut = caffe_pb2.NetParameter(name="netbase")
    cut.layer.add().CopyFrom(text_format.Parse(
        'name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 227 dim: 227 } }',
        caffe_pb2.LayerParameter()))
    for lp in param.layer[1:]:
        if lp.name == "fc6":
            break
        cut.layer.add().CopyFrom(lp)
    net = Net(cut, caffe_pb2.TRAIN, seed=0)
    compared = [name for name in net.layer_names if name in logged and name != "data"]
    assert compared[:4] == ["conv1", "relu1", "pool1", "norm1"] and compared[-1] == "pool5" and len(compared) == 15
    for name in compared:
        top = net.top_names[net.layer_names.index(name)][0]
        assert tuple(net.blobs[top].shape[1:]) == logged[name], name
