"""Prototxt parsing, V0/V1 upgrade, and .caffemodel reading against real Caffe files."""

from __future__ import annotations

import numpy as np
import pytest

from datakit.errors import FormatError
from datakit.formats import caffe_pb2
from datakit.formats.caffemodel import (caffemodel_blobs, model_layers, parse_caffemodel,
                                        read_caffemodel, write_caffemodel)
from datakit.formats.prototxt import parse_net, parse_solver, read_net, read_solver
from tests.wire import encode_field_bytes, encode_varint_field

LENET_SHAPES = {
    "conv1": [(20, 1, 5, 5), (20,)],
    "conv2": [(50, 20, 5, 5), (50,)],
    "ip1": [(500, 800), (500,)],
    "ip2": [(10, 500), (10,)],
}


def test_lenet_caffemodel_layers_and_shapes(shared_data):
    net = read_caffemodel(shared_data / "models/lenet/lenet_iter_10000.caffemodel")
    layers = model_layers(net)
    assert [m.name for m in layers] == ["mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "loss"]
    assert [m.type for m in layers][:2] == ["Data", "Convolution"]
    blobs = caffemodel_blobs(net)
    assert {k: [b.shape for b in v] for k, v in blobs.items()} == LENET_SHAPES
    assert sum(b.size for v in blobs.values() for b in v) == 431_080
    assert blobs["conv1"][0].min() == pytest.approx(-0.4597, abs=1e-4)
    assert blobs["conv1"][0].max() == pytest.approx(0.6135, abs=1e-4)


def test_caffemodel_write_read_is_byte_identical(shared_data, tmp_path):
    src = shared_data / "models/lenet/lenet_iter_10000.caffemodel"
    write_caffemodel(tmp_path / "copy.caffemodel", read_caffemodel(src))
    assert (tmp_path / "copy.caffemodel").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("network", ["netbase", "half0A", "transfer0A0B_1_3", "transfer-ft0A0B_1_3"])
@pytest.mark.parametrize("which", ["train", "val"])
def test_real_2014_prototxts_parse_and_upgrade(shared_data, network, which):
    net = read_net(shared_data / "caffe_logs" / network / f"imagenet_{which}.prototxt")
    assert not len(net.layers), "old-style layers must be gone after the upgrade"
    types = [layer.type for layer in net.layer]
    assert types[0] == "Data" and "padding" not in types
    assert types.count("Convolution") == 5 and types.count("InnerProduct") == 3
    data = net.layer[0]
    assert data.data_param.source and data.data_param.batch_size > 0
    assert data.transform_param.crop_size == 227
    assert data.transform_param.mirror == (which == "train")
    assert data.transform_param.mean_file.endswith(".binaryproto")
    conv1 = net.layer[1]
    assert conv1.convolution_param.num_output == 96
    assert list(conv1.convolution_param.kernel_size) == [11]
    assert list(conv1.convolution_param.stride) == [4]
    conv2 = next(layer for layer in net.layer if layer.name == "conv2")
    assert list(conv2.convolution_param.pad) == [2]
    assert conv2.convolution_param.group == 2
    assert conv2.bottom[0] == "norm1"  # netbase: the padding layer is folded away


def test_blobs_lr_become_lr_mult(shared_data):
    net = read_net(shared_data / "caffe_logs/transfer-ft0A0B_1_3/imagenet_train.prototxt")
    conv1 = next(layer for layer in net.layer if layer.name == "conv1")
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1.0, 1.0), (2.0, 0.0)]


def test_old_solver_parses(shared_data):
    solver = read_solver(shared_data / "caffe_logs/netbase/imagenet_solver.prototxt")
    assert solver.train_net == "imagenet_train.prototxt"
    assert solver.lr_policy == "step" and solver.stepsize == 100000
    assert solver.solver_mode == caffe_pb2.SolverParameter.GPU


def test_solver_type_enum_upgrades_to_type_string():
    solver = parse_solver('net: "x.prototxt"\nsolver_type: NESTEROV\nbase_lr: 0.1\n')
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")


V1_NET = """
name: "v1"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "conv" bottom: "label" top: "loss"
  include { phase: TRAIN } }
"""


def test_v1_net_upgrades():
    net = parse_net(V1_NET, source="v1.prototxt")
    assert [(layer.name, layer.type) for layer in net.layer] == [
        ("input", "Input"), ("conv", "Convolution"), ("relu", "ReLU"), ("loss", "SoftmaxWithLoss")]
    assert list(net.layer[0].input_param.shape[0].dim) == [2, 3, 8, 8]
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[1].param] == [(1, 1), (2, 0)]
    assert net.layer[3].include[0].phase == caffe_pb2.TRAIN
    assert not len(net.input) and not len(net.input_dim)


def test_v1_caffemodel_blobs_survive_upgrade():
    old = caffe_pb2.NetParameter(name="old")
    layer = old.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    blob = layer.blobs.add(num=1, channels=1, height=2, width=3)
    blob.data.extend(range(6))
    net = parse_caffemodel(old.SerializeToString())
    np.testing.assert_array_equal(caffemodel_blobs(net)["ip"][0], np.arange(6).reshape(1, 1, 2, 3))
    assert net.layer[0].type == "InnerProduct"


def test_malformed_prototxt_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bogus_field: 3\n}\n')
    with pytest.raises(FormatError) as err:
        read_net(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}:5:")
    assert "bogus_field" in message and "\n" not in message


def test_cli_malformed_prototxt_one_line_nonzero(tmp_path, cli):
    bad = tmp_path / "net.prototxt"
    bad.write_text('layer {\n  name: "a"\n  type: "ReLU"\n  bottom: "x"\n')  # unclosed brace
    result = cli("datakit", "describe", str(bad))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}:" in lines[0]


def test_cli_upgrade_writes_current_form(shared_data, tmp_path, cli):
    out = tmp_path / "up.prototxt"
    result = cli("datakit", "upgrade", str(shared_data / "caffe_logs/netbase/imagenet_train.prototxt"), str(out))
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "layers {" not in text and 'type: "Convolution"' in text
    assert len(read_net(out, upgrade=False).layer) == 24


def test_cli_upgrade_refuses_an_output_named_as_the_other_form(shared_data, tmp_path, cli):
    """A text net written as x.caffemodel would be read back as weights, and fail there."""
    net = str(shared_data / "caffe_logs/netbase/imagenet_train.prototxt")
    result = cli("datakit", "upgrade", net, str(tmp_path / "up.caffemodel"))
    assert result.returncode != 0 and not (tmp_path / "up.caffemodel").exists()
    [line] = result.stderr.strip().splitlines()
    assert "up.caffemodel: the upgraded net is a text prototxt; name the output *.prototxt" in line
    weights = str(shared_data / "models/lenet/lenet_iter_10000.caffemodel")
    result = cli("datakit", "upgrade", weights, str(tmp_path / "w.prototxt"))
    assert result.returncode != 0 and "name the output *.caffemodel" in result.stderr
    assert cli("datakit", "upgrade", weights, str(tmp_path / "w.caffemodel")).returncode == 0


def test_net_parameter_bytes_match_wire_format():
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="r", type="ReLU")
    layer = encode_field_bytes(1, b"r") + encode_field_bytes(2, b"ReLU")
    assert net.SerializeToString() == encode_field_bytes(1, b"n") + encode_field_bytes(100, layer)
    assert caffe_pb2.NetParameter.FromString(net.SerializeToString()) == net


def test_datum_bytes_match_wire_format():
    pixels = bytes(range(12))
    datum = caffe_pb2.Datum(channels=3, height=2, width=2, data=pixels, label=7)
    expected = (encode_varint_field(1, 3) + encode_varint_field(2, 2) + encode_varint_field(3, 2)
                + encode_field_bytes(4, pixels) + encode_varint_field(5, 7))
    assert datum.SerializeToString() == expected
    back = caffe_pb2.Datum.FromString(expected)
    assert (back.channels, back.height, back.width, back.data, back.label, back.encoded) == (3, 2, 2, pixels, 7, False)
    enc = caffe_pb2.Datum(data=b"\xff\xd8", label=1, encoded=True).SerializeToString()
    assert enc == encode_field_bytes(4, b"\xff\xd8") + encode_varint_field(5, 1) + encode_varint_field(7, 1)
