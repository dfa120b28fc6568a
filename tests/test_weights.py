"""Weights: real Caffe LeNet in and out, V1 (old-style `layers`) models, legacy blob shapes."""

from __future__ import annotations

import numpy as np
import pytest

from datakit.errors import FormatError
from datakit.formats import caffe_pb2
from datakit.formats.caffemodel import caffemodel_blobs, read_caffemodel
from trainer.net import Net
from trainer.weights import load_weights, load_weights_list, save_weights

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_real_lenet_roundtrip(shared_data, tmp_path):
    model = shared_data / "models/lenet/lenet_iter_10000.caffemodel"
    net = Net.from_file(ROOT / "models/lenet/lenet_deploy.prototxt", caffe_pb2.TEST)
    report = load_weights(net, model)
    assert report.copied == ["conv1", "conv2", "ip1", "ip2"]
    assert report.initialised == [] and report.ignored == []
    original = caffemodel_blobs(read_caffemodel(model))
    for name, arrays in original.items():
        for ours, theirs in zip(net.layer(name).blobs, arrays):
            np.testing.assert_array_equal(ours.data, theirs)
    out = tmp_path / "again.caffemodel"
    save_weights(net, out)
    again = caffemodel_blobs(read_caffemodel(out))
    assert sorted(again) == sorted(original)
    for name in original:
        for a, b in zip(again[name], original[name]):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    # What Caffe's CopyTrainedLayersFrom needs: layers by name with `shape`d blobs.
    proto = caffe_pb2.NetParameter()
    proto.ParseFromString(out.read_bytes())
    conv1 = next(lp for lp in proto.layer if lp.name == "conv1")
    assert conv1.type == "Convolution" and list(conv1.blobs[0].shape.dim) == [20, 1, 5, 5]


def test_real_lenet_into_a_wrong_net_names_layer_and_shapes(shared_data, tmp_path):
    text = (ROOT / "models/lenet/lenet_deploy.prototxt").read_text().replace("dim: 64 dim: 1", "dim: 64 dim: 3")
    path = tmp_path / "rgb_lenet.prototxt"
    path.write_text(text)
    net = Net.from_file(path, caffe_pb2.TEST)
    with pytest.raises(FormatError) as err:
        load_weights(net, shared_data / "models/lenet/lenet_iter_10000.caffemodel")
    assert "layer conv1: " in str(err.value)
    assert "has shape (20,1,5,5), net expects (20,3,5,5)" in str(err.value)


def test_v1_caffemodel_loads(tmp_path):
    v1 = caffe_pb2.NetParameter(name="old")
    layer = v1.layers.add()
    layer.name = "fc"
    layer.type = caffe_pb2.V1LayerParameter.INNER_PRODUCT
    layer.bottom.append("data")
    layer.top.append("fc")
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    for arr in (w, np.array([0.5, -1.0], np.float32)):
        blob = layer.blobs.add()
        legacy = (1,) * (4 - arr.ndim) + arr.shape  # V1 models store num/channels/height/width
        blob.num, blob.channels, blob.height, blob.width = legacy
        blob.data.extend(arr.ravel())
    path = tmp_path / "old.caffemodel"
    path.write_bytes(v1.SerializeToString())
    from google.protobuf import text_format
    net = Net(text_format.Parse('''
        layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }
        layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 } }
    ''', caffe_pb2.NetParameter()), caffe_pb2.TEST)
    report = load_weights_list(net, str(path))[0]
    assert report.copied == ["fc"]
    np.testing.assert_array_equal(net.layer("fc").blobs[0].data, w)
    net.blobs["data"].data[...] = [[1.0, 2.0, 3.0]]
    net.forward()
    np.testing.assert_allclose(net.outputs()["fc"], [[8.5, 25.0]])


def test_missing_model_file_is_a_clear_error(tmp_path):
    net = Net.from_file(ROOT / "models/lenet/lenet_deploy.prototxt", caffe_pb2.TEST)
    with pytest.raises(FormatError, match="not found"):
        load_weights(net, tmp_path / "nope.caffemodel")
