"""The rest of Caffe's layer catalogue: gradient checks for every layer and parameter combination,
and values computed by hand from Caffe's formulas (src/caffe/layers/*.cpp)."""

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


# ------------------------------------------------------------ HDF5Output ----


def test_hdf5_output_appends_every_batch_and_hdf5data_reads_it_back(tmp_path):
    import h5py

    from tests.test_net import net_param
    from trainer.net import Net
    text = f'''
    layer {{ name: "in" type: "Input" top: "x" top: "y" input_param {{ shape {{ dim: 3 dim: 2 dim: 2 }} shape {{ dim: 3 }} }} }}
    layer {{ name: "out" type: "HDF5Output" bottom: "x" bottom: "y" hdf5_output_param {{ file_name: "{tmp_path}/o/out.h5" }} }}'''
    rng = np.random.default_rng(0)
    batches = []
    with Net(net_param(text), TEST) as net:
        for _ in range(3):
            batch = (rng.standard_normal((3, 2, 2)).astype(np.float32), rng.integers(0, 5, 3).astype(np.float32))
            net.blobs["x"].data[...] = batch[0]
            net.blobs["y"].data[...] = batch[1]
            net.forward()
            batches.append(batch)
            with h5py.File(tmp_path / "o/out.h5", "r") as h:  # flushed: readable while the net runs
                assert h["data"].shape[0] == 3 * len(batches)
    with h5py.File(tmp_path / "o/out.h5", "r") as h:
        np.testing.assert_array_equal(h["data"][...], np.concatenate([b[0] for b in batches]))
        np.testing.assert_array_equal(h["label"][...], np.concatenate([b[1] for b in batches]))
    (tmp_path / "list.txt").write_text(f"{tmp_path}/o/out.h5\n")
    reader = f'layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{tmp_path}/list.txt" batch_size: 9 }} }}'
    with Net(net_param(reader), TEST) as net:
        net.forward()
        np.testing.assert_array_equal(net.blobs["label"].data, np.concatenate([b[1] for b in batches]))
    with pytest.raises(FormatError, match="file_name is required"):
        make_layer('type: "HDF5Output"', [rand(2, 1), rand(2)], n_tops=0)


# ------------------------------------------------------------ WindowData ----


def _window_project(tmp_path, extra="", transform="crop_size: 8", fg_fraction=0.5):
    import cv2

    from tests.test_net import net_param
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(2)]
    for k, img in enumerate(imgs):
        cv2.imwrite(str(tmp_path / f"im{k}.png"), img)
    (tmp_path / "windows.txt").write_text(
        "# 0\nim0.png\n3\n20\n30\n3\n1 0.9 2 3 11 12\n0 0.1 0 0 29 19\n2 0.4 5 5 9 9\n"   # fg, bg, unused
        "# 1\nim1.png\n3\n20\n30\n2\n3 0.7 10 4 25 15\n0 0.0 20 10 29 19\n")
    text = (f'layer {{ name: "w" type: "WindowData" top: "data" top: "label" window_data_param {{ source: '
            f'"{tmp_path}/windows.txt" root_folder: "{tmp_path}/" batch_size: 8 fg_fraction: {fg_fraction} {extra} }} '
            f'transform_param {{ {transform} }} }}')
    return imgs, net_param(text)


def test_window_data_batches_warp_windows_with_caffes_labels(tmp_path):
    import cv2

    from trainer.net import Net
    imgs, param = _window_project(tmp_path, extra="cache_images: true", transform="crop_size: 8 mean_value: 10 scale: 0.5")
    with Net(param, TEST, seed=1) as net:
        net.forward()
        data, label = net.blobs["data"].data, net.blobs["label"].data
        assert data.shape == (8, 3, 8, 8)
        assert sorted(label[:4]) == [0] * 4 and set(label[4:]) <= {1, 3}   # background first, then foreground
        for i, lab in enumerate(label[4:], start=4):
            img, (x1, y1, x2, y2) = (imgs[0], (2, 3, 11, 12)) if lab == 1 else (imgs[1], (10, 4, 25, 15))
            want = cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (8, 8), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(data[i], (want.transpose(2, 0, 1) - 10.0) * 0.5)
        keys = net.layer("w").last_keys
    with Net(param, TEST, seed=1) as again:   # batch k is a function of (seed, k): a resume repeats it
        again.forward()
        assert again.layer("w").last_keys == keys


def test_window_data_context_pad_square_and_mirror_pad_as_caffe(tmp_path):
    import cv2

    from trainer.net import Net
    imgs, param = _window_project(tmp_path, extra="context_pad: 2 crop_mode: 'square' bg_threshold: 0.05",
                                  transform="crop_size: 10 mirror: true", fg_fraction=0.0)
    with Net(param, TEST, seed=0) as net:
        net.forward()
        data, label = net.blobs["data"].data, net.blobs["label"].data
    assert (label == 0).all()
    # The one background window under 0.05 overlap, (20,10)-(29,19) of im1, widened by 10/6 about its centre:
    # x 17..33, y 7..23 (17x17), clipped to x 17..29, y 7..19; scale 10/17 warps the 13x13 part to 8x8;
    # the clipped-off right/bottom 4 pixels become 2 zero columns (left when mirrored) and 2 zero rows.
    part = cv2.resize(imgs[1][7:20, 17:30], (8, 8), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    plain = np.zeros((3, 10, 10), np.float32)
    plain[:, :8, :8] = part
    mirrored = np.zeros((3, 10, 10), np.float32)
    mirrored[:, :8, 2:] = part[:, :, ::-1]
    kinds = [0 if np.array_equal(d, plain) else 1 if np.array_equal(d, mirrored) else -1 for d in data]
    assert -1 not in kinds and set(kinds) == {0, 1}


def test_window_data_errors_name_the_file_and_line(tmp_path):
    from trainer.layers.data_window import parse_window_file
    (tmp_path / "w.txt").write_text("# 0\nim.png\n3\n20\nthirty\n")
    with pytest.raises(FormatError, match=r"w.txt:5: invalid literal"):
        parse_window_file(tmp_path / "w.txt", "")
    (tmp_path / "w.txt").write_text("# 0\nim.png\n3\n20\n30\n1\n1 0.9 2 3 11\n")
    with pytest.raises(FormatError, match=r"w.txt:7: a window line has 6 values"):
        parse_window_file(tmp_path / "w.txt", "")


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


# ------------------------------------------------------- unknown types ----


def test_unknown_type_names_the_prototxt_line_and_the_nearest_type(tmp_path):
    from trainer.layers import layer_class
    from trainer.net import Net
    path = tmp_path / "net.prototxt"
    path.write_text('name: "n"\nlayer { name: "in" type: "Input" top: "x"\n  input_param { shape { dim: 1 dim: 3 } } }\n'
                    'layer {\n  name: "act"\n  # a comment with { braces }\n  type: "Relu"\n  bottom: "x" top: "y"\n}\n')
    with pytest.raises(FormatError) as err:
        Net.from_file(path)
    assert str(err.value) == f"{path}:7: layer act: unknown layer type 'Relu'; did you mean 'ReLU' or 'PReLU' or 'ELU'?"
    with pytest.raises(FormatError, match="did you mean 'SigmoidCrossEntropyLoss'"):
        layer_class("SigmoidCrossEntropy", "x")
    with pytest.raises(FormatError, match="known types: AbsVal, Accuracy, ArgMax, BNLL"):
        layer_class("Zzzzzz", "x")


def test_fit_names_the_line_of_an_unknown_type_in_the_solver_or_net_file(tmp_path, monkeypatch):
    from trainer.fit import FitOptions, build
    monkeypatch.chdir(tmp_path)
    (tmp_path / "solver.prototxt").write_text(
        'base_lr: 0.1 max_iter: 1 random_seed: 1 snapshot_after_train: false\n'
        'net_param {\n  layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
        '  layer { name: "bad" type: "Embedd" bottom: "x" top: "y" }\n}\n')
    with pytest.raises(FormatError, match=r"solver.prototxt:4: layer bad: unknown layer type 'Embedd'; "
                                          r"did you mean 'Embed'\?"):
        build(FitOptions(solver="solver.prototxt", device="cpu", stream=None))


# ------------------------------------------------------- the README list ----


def test_readme_layer_list_is_the_registry():
    from pathlib import Path

    from trainer.layers import registered_types
    from trainer.layers.catalogue import markdown, replace_block
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert replace_block(readme) == readme, \
        "README.md's layer list is stale: run `python -m trainer.layers.catalogue README.md`"
    assert all(f"`{t}`" in markdown() for t in registered_types())


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


def test_old_style_v1_nets_with_these_layers_upgrade_and_run():
    from datakit.formats.prototxt import parse_net
    from trainer.net import Net
    text = '''
    input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
    input: "label" input_shape { dim: 2 }
    layers { name: "bnll" type: BNLL bottom: "x" top: "b" }
    layers { name: "mvn" type: MVN bottom: "b" top: "m" mvn_param { across_channels: true } }
    layers { name: "exp" type: EXP bottom: "m" top: "e" exp_param { scale: 0.5 } }
    layers { name: "th" type: THRESHOLD bottom: "e" top: "t" threshold_param { threshold: 1 } }
    layers { name: "cols" type: IM2COL bottom: "m" top: "c" convolution_param { kernel_size: 2 } }
    layers { name: "fc" type: INNER_PRODUCT bottom: "c" top: "fc" inner_product_param { num_output: 3
      weight_filler { type: "gaussian" } } }
    layers { name: "hinge" type: HINGE_LOSS bottom: "fc" bottom: "label" top: "loss" hinge_loss_param { norm: L2 } }
    layers { name: "sil" type: SILENCE bottom: "t" }
    '''
    net = Net(parse_net(text), TEST)
    assert [layer.type for layer in net.layers][1:] == ["BNLL", "MVN", "Split", "Exp", "Threshold", "Im2col",
                                                         "InnerProduct", "HingeLoss", "Silence"]
    assert np.isfinite(net.forward())


def test_softmax_with_loss_normalization_wins_over_legacy_normalize():
    scores, labels = rand(3, 4), np.array([0.0, 1, 2])
    layer, b, t = make_layer('type: "SoftmaxWithLoss" loss_param { normalize: false normalization: VALID }',
                             [scores, labels])
    ref, rb, rt = make_layer('type: "SoftmaxWithLoss" loss_param { normalization: NONE }', [scores, labels])
    assert float(run_forward(layer, b, t)[0]) == pytest.approx(float(run_forward(ref, rb, rt)[0]) / 3)
