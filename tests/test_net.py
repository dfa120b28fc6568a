"""Net: phase rules, implicit splits, in-place layers, backward pruning, params, weights I/O."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from datakit.errors import FormatError
from datakit.formats import caffe_pb2
from trainer.net import Net

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def net_param(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


INPUTS = '''
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 3 dim: 2 dim: 5 dim: 5 } shape { dim: 3 } } }
'''

# conv1 feeds both a ReLU(in place)->pool branch and a second conv: "conv1" gets a Split.
BRANCHY = INPUTS + '''
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 3 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.2 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 2 kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "cat" type: "Concat" bottom: "pool1" bottom: "conv2" top: "cat" }
layer { name: "lrn" type: "LRN" bottom: "cat" top: "lrn" lrn_param { local_size: 3 alpha: 0.5 } }
layer { name: "ip" type: "InnerProduct" bottom: "lrn" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include { phase: TEST } }
'''


def _fill_inputs(net: Net, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = np.array([0, 3, 1])


def test_split_inserted_and_outputs():
    net = Net(net_param(BRANCHY), TRAIN, seed=0)
    assert "conv1_relu1_0_split" in net.layer_names  # the ReLU's in-place top feeds two layers
    assert net.output_names == ["loss"]
    net_test = Net(net_param(BRANCHY), TEST, seed=0)
    assert net_test.output_names == ["loss", "accuracy"]
    assert "ip_ip_0_split" in net_test.layer_names


def _central_difference(net, values, at, step: float = 1e-6) -> float:
    """d(loss)/d(values[at]) by central differences; values[at] is restored."""
    old = values[at]
    values[at] = old + step
    plus = net.forward()
    values[at] = old - step
    minus = net.forward()
    values[at] = old
    return (plus - minus) / (2 * step)


def test_net_gradients_through_split_inplace_concat():
    net = Net(net_param("force_backward: true\n" + BRANCHY), TRAIN, seed=0, dtype=np.float64)
    _fill_inputs(net)
    net.forward()
    net.clear_param_diffs()
    net.backward()
    rng = np.random.default_rng(0)
    targets = [("data", net.blobs["data"], net.blobs["data"].diff.copy())]
    targets += [(f"{p.layer_name}[{p.index}]", p.blob, p.diff.copy()) for p in net.learnable_params]
    for what, blob, analytic in targets:
        flat = blob.data.reshape(-1)
        for i in rng.choice(flat.size, size=min(15, flat.size), replace=False):
            numeric = _central_difference(net, flat, i)
            a = analytic.reshape(-1)[i]
            assert abs(a - numeric) <= 1e-5 * max(1, abs(a)), f"{what}[{i}]: {a} vs {numeric}"


def test_param_diffs_accumulate_like_caffe():
    net = Net(net_param(BRANCHY), TRAIN, seed=0, dtype=np.float64)
    _fill_inputs(net)
    net.clear_param_diffs()
    net.forward_backward()
    once = [p.diff.copy() for p in net.learnable_params]
    net.forward_backward()
    for p, d in zip(net.learnable_params, once):
        np.testing.assert_allclose(p.diff, 2 * d)


def test_frozen_bottom_layers_skip_backward():
    text = BRANCHY.replace('bottom: "data" top: "conv1"',
                           'bottom: "data" top: "conv1" param { lr_mult: 0 } param { lr_mult: 0 }')
    net = Net(net_param(text), TRAIN, seed=0)
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need["conv1"] is False and need["relu1"] is False and need["conv2"] is True
    assert need["in"] is False
    calls = []
    conv1 = net.layer("conv1")
    original = conv1.backward
    conv1.backward = lambda *a: calls.append(1) or original(*a)
    _fill_inputs(net)
    net.clear_param_diffs()
    net.forward_backward()
    assert calls == []
    assert float(np.abs(net.layer("conv1").blobs[0].diff).sum()) == 0.0
    assert float(np.abs(net.layer("conv2").blobs[0].diff).sum()) > 0.0
    mults = {(p.layer_name, p.index): (p.lr_mult, p.decay_mult) for p in net.learnable_params}
    assert mults[("conv1", 0)] == (0.0, 1.0) and mults[("ip", 0)] == (1.0, 1.0)


def test_propagate_down_false_stops_gradient():
    text = BRANCHY.replace('bottom: "lrn" top: "ip"', 'bottom: "lrn" top: "ip" propagate_down: false')
    net = Net(net_param(text), TRAIN, seed=0)
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need["ip"] is True  # its own weights still learn
    assert need["lrn"] is False and need["conv1"] is False


def test_layers_not_under_a_loss_skip_backward():
    net = Net(net_param(BRANCHY), TEST, seed=0)
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need["acc"] is False and need["loss"] is True


def test_phase_level_stage_rules():
    text = INPUTS + '''
    layer { name: "a" type: "ReLU" bottom: "data" top: "a" include { phase: TRAIN } }
    layer { name: "b" type: "ReLU" bottom: "data" top: "b" include { stage: "deploy" } }
    layer { name: "c" type: "ReLU" bottom: "data" top: "c" exclude { min_level: 2 } }
    layer { name: "d" type: "ReLU" bottom: "data" top: "d" include { not_stage: "deploy" phase: TEST } }
    '''
    names = lambda **kw: [n for n in Net(net_param(text), **kw).layer_names if len(n) == 1]
    assert names(phase=TRAIN) == ["a", "c"]
    assert names(phase=TEST) == ["c", "d"]
    assert names(phase=TEST, stages=["deploy"], level=2) == ["b"]


def test_shared_params_by_name():
    text = INPUTS + '''
    layer { name: "f1" type: "InnerProduct" bottom: "data" top: "f1" param { name: "w" } param { name: "bias" }
      inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    layer { name: "f2" type: "InnerProduct" bottom: "data" top: "f2" param { name: "w" } param { name: "bias" }
      inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    layer { name: "sum" type: "Eltwise" bottom: "f1" bottom: "f2" top: "s" }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss" }
    '''
    net = Net(net_param(text), TRAIN, seed=0, dtype=np.float64)
    assert len(net.learnable_params) == 2
    assert net.layer("f1").blobs[0] is net.layer("f2").blobs[0]
    _fill_inputs(net)
    net.clear_param_diffs()
    net.forward_backward()
    # the shared gradient is the sum of both uses: twice one use, as f1 and f2 compute the same
    single = Net(net_param(text.replace('param { name: "w" } param { name: "bias" }', "", 1)), TRAIN, seed=0,
                 dtype=np.float64)
    assert len(single.learnable_params) == 4


def test_bad_bottom_and_duplicate_top_are_clear_errors():
    with pytest.raises(FormatError, match="layer r: bottom blob 'nope'"):
        Net(net_param(INPUTS + 'layer { name: "r" type: "ReLU" bottom: "nope" top: "r" }'), TEST)
    with pytest.raises(FormatError, match="already produced"):
        Net(net_param(INPUTS + 'layer { name: "r" type: "ReLU" bottom: "data" top: "label" }'), TEST)


def test_legacy_net_inputs():
    text = 'input: "data" input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 4\n' \
           'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }'
    net = Net(net_param(text), TEST)
    assert net.blobs["data"].shape == (2, 3, 4, 4)
    assert net.input_names == ["data"]


# ------------------------------------------------------------------ weights ----

def test_to_proto_copy_from_roundtrip_and_report(tmp_path):
    from trainer.weights import load_weights, save_weights
    a = Net(net_param(BRANCHY), TRAIN, seed=1)
    path = tmp_path / "w.caffemodel"
    save_weights(a, path)
    text_b = BRANCHY.replace('name: "ip"', 'name: "ip_new"')
    b = Net(net_param(text_b), TEST, seed=2)
    report = load_weights(b, path)
    assert sorted(report.copied) == ["conv1", "conv2"]
    assert report.initialised == ["ip_new"]
    assert report.ignored == ["ip"]
    np.testing.assert_array_equal(b.layer("conv1").blobs[0].data, a.layer("conv1").blobs[0].data)
    proto = caffe_pb2.NetParameter()
    proto.ParseFromString(path.read_bytes())
    assert not any(lp.type == "Split" for lp in proto.layer)
    assert list(proto.layer[1].blobs[0].shape.dim) == [3, 2, 3, 3]


def test_copy_from_shape_mismatch_message():
    a = Net(net_param(BRANCHY), TRAIN, seed=1)
    b = Net(net_param(BRANCHY.replace("dim: 3 dim: 2 dim: 5", "dim: 3 dim: 1 dim: 5")), TRAIN, seed=1)
    with pytest.raises(FormatError, match=r"layer conv1: caffemodel blob 0 has shape \(3,2,3,3\), net expects \(3,1,3,3\)"):
        b.copy_from(a.to_proto())


def test_copy_from_accepts_legacy_4d_blobs():
    a = Net(net_param(BRANCHY), TRAIN, seed=1)
    proto = a.to_proto()
    ip = next(lp for lp in proto.layer if lp.name == "ip")
    for blob in ip.blobs:
        dims = list(blob.shape.dim)
        blob.ClearField("shape")
        legacy = [1] * (4 - len(dims)) + dims
        blob.num, blob.channels, blob.height, blob.width = legacy
    b = Net(net_param(BRANCHY), TRAIN, seed=9)
    b.copy_from(proto)
    np.testing.assert_array_equal(b.layer("ip").blobs[0].data, a.layer("ip").blobs[0].data)


def test_share_trained_layers_with():
    train = Net(net_param(BRANCHY), TRAIN, seed=1)
    test = Net(net_param(BRANCHY), TEST, seed=2)
    test.share_trained_layers_with(train)
    train.layer("ip").blobs[0].data[...] = 0.5
    assert (test.layer("ip").blobs[0].data == 0.5).all()
    assert test.learnable_params[0].blob is train.learnable_params[0].blob


def test_batchnorm_statistics_are_never_learned():
    text = INPUTS + '''
    layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }
    layer { name: "sc" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true } }
    layer { name: "ip" type: "InnerProduct" bottom: "bn" top: "ip" inner_product_param { num_output: 4 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    '''
    net = Net(net_param(text), TRAIN, seed=0)
    mults = {(p.layer_name, p.index): p.lr_mult for p in net.learnable_params}
    assert mults[("bn", 0)] == mults[("bn", 1)] == mults[("bn", 2)] == 0.0
    assert mults[("sc", 0)] == 1.0
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need["bn"] is False and need["sc"] is True


def test_unknown_layer_or_blob_is_a_one_line_format_error_and_still_a_key_error():
    from trainer.net import UnknownNameError
    net = Net(net_param(INPUTS + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }'), TEST)
    for lookup, name in ((net.layer, "nope"), (net.blob, "nada")):
        with pytest.raises(FormatError) as info:
            lookup(name)
        assert isinstance(info.value, KeyError) and isinstance(info.value, UnknownNameError)
        assert str(info.value).startswith(f"net {net.name!r} has no ") and f"{name!r}" in str(info.value)
    with pytest.raises(KeyError, match="its layers: .*r"):
        net.layer("nope")


def test_a_data_layer_keeps_both_its_prototxt_and_its_database(tmp_path):
    """Every layer knows the prototxt it came from (``Layer.prototxt``, where Python layers import
    from); a Data layer's ``source`` is its database. They were one attribute, and the Data layer's
    setup overwrote the prototxt path with the database's."""
    from datakit.db.lmdb_backend import LmdbWriter
    from datakit.formats.datum import encode_datum

    writer = LmdbWriter(tmp_path / "db")
    writer.write([(f"{i:08d}_r".encode(), encode_datum(np.full((1, 2, 2), i, np.uint8), i)) for i in range(4)])
    writer.close()
    proto = tmp_path / "net.prototxt"
    proto.write_text(f'layer {{ name: "d" type: "Data" top: "data" top: "label" '
                     f'data_param {{ source: "{tmp_path / "db"}" batch_size: 2 }} }}\n', encoding="utf-8")
    with Net.from_file(proto, TEST) as net:
        data = net.layer("d")
        assert data.prototxt == str(proto)
        assert data.source_name == str(tmp_path / "db")
        net.forward()
        np.testing.assert_array_equal(net.blobs["label"].data, [0, 1])


LOSS_WEIGHTED_AND_READ = '''
layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h" loss_weight: 0.5
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
layer { name: "euc" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "l" }
'''


def test_a_loss_weighted_top_that_another_layer_reads_gets_both_gradients():
    """`h` carries loss_weight 0.5 and feeds a EuclideanLoss: Caffe's InsertSplits counts the loss as a
    use, so a Split's first top (h_ip_0_split_0, a net output) carries the 0.5 and the reader takes
    h_ip_0_split_1; dL/dh = 0.5 + the Euclidean gradient. Seeding `h` itself with 0.5 overwrote the
    Euclidean gradient (the weight gradient then missed it): checked here by central differences."""
    net = Net(net_param(LOSS_WEIGHTED_AND_READ), TRAIN, seed=0, dtype=np.float64)
    assert net.layer_names == ["in", "ip", "h_ip_0_split", "euc"]
    assert net.bottom_names[net.layer_names.index("euc")][0] == "h_ip_0_split_1"
    assert net.output_loss_weights() == {"h_ip_0_split_0": 0.5, "l": 1.0}
    rng = np.random.default_rng(0)
    net.blobs["x"].data[...] = rng.standard_normal((2, 3))
    net.blobs["t"].data[...] = rng.standard_normal((2, 2))
    w = net.layer("ip").blobs[0].data
    h = w @ net.blobs["x"].data.T  # (2 outputs, 2 samples), no bias: constant 0
    expected_loss = 0.5 * h.sum() + ((h.T - net.blobs["t"].data) ** 2).sum() / 4
    net.clear_param_diffs()
    assert net.forward() == pytest.approx(expected_loss, rel=1e-12)
    net.backward()
    analytic = net.layer("ip").blobs[0].diff.copy()
    numeric = np.zeros_like(w)
    for idx in np.ndindex(*w.shape):
        numeric[idx] = _central_difference(net, w, idx)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
