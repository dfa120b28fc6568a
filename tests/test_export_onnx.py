"""trainer export: ONNX Runtime's outputs equal the trainer's forward (1e-5), onnx.checker passes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from datakit.formats import caffe_pb2
from datakit.formats.blobproto import write_mean
from datakit.formats.caffemodel import write_caffemodel
from datakit.formats.prototxt import parse_net
from tests.conftest import ROOT

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[test]' installs it)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[test]' installs it)")

from trainer.export_onnx import build_net, export_onnx, net_to_onnx  # noqa: E402
from trainer.net import TEST, Net  # noqa: E402
from trainer.onnx_layers import UnsupportedLayer  # noqa: E402

TOL = 1e-5


def randomize(net, seed=0):
    """He-scaled random weights (activations stay O(1) through deep nets); BN statistics made valid."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for k, blob in enumerate(layer.blobs):
            shape = blob.shape
            if layer.type == "BatchNorm":
                value = [rng.normal(0, 1, shape), rng.uniform(0.5, 2, shape), np.full(shape, 2.0)][k]
            elif layer.type in ("Scale", "PReLU"):
                value = rng.uniform(0.5, 1.5, shape)
            else:
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                value = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / max(fan_in, 1)))
            blob.data[...] = value


def trainer_forward(net, inputs):
    for name, x in inputs.items():
        net.blob(name).data[...] = x
    net.forward()
    return {name: net.blob(name).data.copy() for name in net.output_names}


def check_export(tmp_path, prototxt_text, *, seed=0, input_scale=1.0, via_files=True):
    """Random weights, export (through prototxt + caffemodel files, or from the built net for the
    CaffeNet-sized nets, whose 240 MB caffemodel round trip the LeNet and V1 tests already cover),
    compare ONNX Runtime with the trainer."""
    proto = tmp_path / "net.prototxt"
    proto.write_text(prototxt_text)
    net = Net(parse_net(prototxt_text), TEST)
    randomize(net, seed)
    if via_files:
        write_caffemodel(tmp_path / "w.caffemodel", net.to_proto())
        out = export_onnx(proto, tmp_path / "w.caffemodel", tmp_path / "m.onnx")
        model = onnx.load(out)
    else:
        model = net_to_onnx(net)
        out = tmp_path / "m.onnx"
        out.write_bytes(model.SerializeToString())
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(seed + 1)
    inputs = {n: (rng.uniform(-1, 1, net.blob(n).shape) * input_scale).astype(np.float32) for n in net.input_names}
    theirs = trainer_forward(net, inputs)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ours = dict(zip(net.output_names, sess.run(net.output_names, inputs)))
    for name in net.output_names:
        assert ours[name].shape == theirs[name].shape, name
        # 1e-5 absolute, and relative for values above 1 (float32 holds ~7 digits: 1e-5 of 100 is 1 ulp)
        err = float((np.abs(ours[name] - theirs[name]) / np.maximum(1.0, np.abs(theirs[name]))).max())
        assert err <= TOL, f"{name}: max |onnx - trainer| / max(1, |trainer|) = {err} (largest |value| {np.abs(theirs[name]).max()})"
    net.close()
    return model, ours, theirs


def test_real_lenet_caffemodel(shared_data, tmp_path):
    lenet = shared_data / "models" / "lenet"
    out = export_onnx(lenet / "lenet.prototxt", lenet / "lenet_iter_10000.caffemodel", tmp_path / "lenet.onnx")
    onnx.checker.check_model(onnx.load(out), full_check=True)
    net = build_net(lenet / "lenet.prototxt", lenet / "lenet_iter_10000.caffemodel")
    x = np.random.default_rng(0).uniform(0, 1, net.blob("data").shape).astype(np.float32)
    theirs = trainer_forward(net, {"data": x})["prob"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (ours,) = sess.run(["prob"], {"data": x})
    assert np.abs(ours - theirs).max() <= TOL
    # the batch size is free: 3 images give the first 3 rows
    (three,) = sess.run(["prob"], {"data": x[:3]})
    assert np.abs(three - theirs[:3]).max() <= TOL


def caffenet_text(batch=1):
    text = (ROOT / "models" / "caffenet" / "deploy.prototxt").read_text()
    return re.sub(r"dim: 10 dim: 3", f"dim: {batch} dim: 3", text, count=1)


@pytest.mark.slow
def test_caffenet_random_weights_grouped_conv_ceil_pools_lrn(tmp_path):
    model, ours, _ = check_export(tmp_path, caffenet_text(), input_scale=100, via_files=False)
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "MaxPool", "LRN", "Gemm", "Softmax", "Relu"} <= ops
    assert any(n.op_type == "Conv" and any(a.name == "group" and a.i == 2 for a in n.attribute) for n in model.graph.node)
    assert ours["prob"].shape == (1, 1000)


def test_preprocessing_mean_image_and_scale_folded_in(tmp_path):
    text = ('name: "p" input: "data" input_shape { dim: 2 dim: 3 dim: 6 dim: 6 } '
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }')
    mean = np.random.default_rng(5).uniform(0, 255, (3, 8, 8)).astype(np.float32)
    write_mean(tmp_path / "mean.binaryproto", mean)
    (tmp_path / "net.prototxt").write_text(text)
    net = Net(parse_net(text), TEST)
    randomize(net)
    write_caffemodel(tmp_path / "w.caffemodel", net.to_proto())
    out = export_onnx(tmp_path / "net.prototxt", tmp_path / "w.caffemodel", tmp_path / "m.onnx",
                      mean=mean, scale=0.017)
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 3, 6, 6)).astype(np.float32)
    theirs = trainer_forward(net, {"data": (pixels - mean[:, 1:7, 1:7]) * np.float32(0.017)})["conv"]
    (ours,) = ort.InferenceSession(str(out)).run(["conv"], {"data": pixels})
    assert np.abs(ours - theirs).max() <= TOL


V1_NET = """name: "v1net"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 17 input_dim: 17
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layers { name: "norm1" type: LRN bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layers { name: "conv2" type: CONVOLUTION bottom: "norm1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 group: 2 pad: 1 } }
layers { name: "sig" type: SIGMOID bottom: "conv2" top: "sig" }
layers { name: "tanh" type: TANH bottom: "conv2" top: "tanh" }
layers { name: "sum" type: ELTWISE bottom: "sig" bottom: "tanh" top: "sum" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }
layers { name: "drop" type: DROPOUT bottom: "sum" top: "sum" dropout_param { dropout_ratio: 0.5 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "sum" top: "fc" inner_product_param { num_output: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""


def test_v1_net_after_upgrade_with_v1_caffemodel(tmp_path):
    net = Net(parse_net(V1_NET), TEST)
    randomize(net, 3)
    # a V1 caffemodel: old-style `layers` with enum types and 4-D legacy blob shapes
    old = caffe_pb2.NetParameter(name="v1net")
    v1_types = {"Convolution": caffe_pb2.V1LayerParameter.CONVOLUTION,
                "InnerProduct": caffe_pb2.V1LayerParameter.INNER_PRODUCT}
    for layer in net.layers:
        if not layer.blobs:
            continue
        lp = old.layers.add(name=layer.name, type=v1_types[layer.type])
        for blob in layer.blobs:
            arr = np.asarray(blob.data)
            legacy = (1,) * (4 - arr.ndim) + arr.shape
            bp = lp.blobs.add(num=legacy[0], channels=legacy[1], height=legacy[2], width=legacy[3])
            bp.data.extend(arr.reshape(-1).tolist())
    (tmp_path / "w.caffemodel").write_bytes(old.SerializeToString())
    (tmp_path / "v1.prototxt").write_text(V1_NET)
    out = export_onnx(tmp_path / "v1.prototxt", tmp_path / "w.caffemodel", tmp_path / "v1.onnx")
    onnx.checker.check_model(onnx.load(out), full_check=True)
    x = np.random.default_rng(9).uniform(-1, 1, (2, 3, 17, 17)).astype(np.float32)
    theirs = trainer_forward(net, {"data": x})["prob"]
    (ours,) = ort.InferenceSession(str(out)).run(["prob"], {"data": x})
    assert np.abs(ours - theirs).max() <= TOL


def test_real_2014_v0_caffenet_prototxt(shared_data, tmp_path):
    """A 2014 V0 CaffeNet (layers { layer { type: "conv" } }) with its data layer swapped for an input."""
    src = (shared_data / "convnet_transfer" / "results" / "transfer0A0B_1_3" / "imagenet_val.prototxt").read_text()
    blocks = re.split(r"(?m)^layers \{", src)
    head, layers = blocks[0], ["layers {" + b for b in blocks[1:]]
    kept = [b for b in layers if not re.search(r'type: "(data|softmax_loss|accuracy)"', b)]
    text = head + 'input: "data"\ninput_dim: 1 input_dim: 3 input_dim: 227 input_dim: 227\n' + "".join(kept)
    if 'type: "softmax"' not in text:
        last_top = re.findall(r'top: "(\w+)"', kept[-1])[-1]
        text += f'layers {{ layer {{ name: "prob" type: "softmax" }} bottom: "{last_top}" top: "prob" }}\n'
    check_export(tmp_path, text, input_scale=100, via_files=False)


ZOO = """name: "zoo"
layer { name: "in" type: "Input" top: "data" top: "aux" input_param { shape { dim: 2 dim: 4 dim: 9 dim: 11 } shape { dim: 2 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 6 kernel_size: 3 dilation: 2 pad: 2 stride: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { eps: 0.001 } }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "conv" }
layer { name: "deconv" type: "Deconvolution" bottom: "conv" top: "up" convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
layer { name: "elu" type: "ELU" bottom: "up" top: "up" elu_param { alpha: 0.7 } }
layer { name: "absv" type: "AbsVal" bottom: "up" top: "absu" }
layer { name: "pow" type: "Power" bottom: "absu" top: "powu" power_param { power: 1.5 scale: 0.5 shift: 0.25 } }
layer { name: "maxp" type: "Pooling" bottom: "powu" top: "maxp" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "avep" type: "Pooling" bottom: "powu" top: "avep" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "prod" type: "Eltwise" bottom: "maxp" bottom: "avep" top: "prod" eltwise_param { operation: PROD } }
layer { name: "emax" type: "Eltwise" bottom: "maxp" bottom: "prod" top: "emax" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "emax" bottom: "avep" top: "cat" concat_param { axis: 1 } }
layer { name: "gap" type: "Pooling" bottom: "cat" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "lrn" type: "LRN" bottom: "cat" top: "lrn" lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 k: 2 } }
layer { name: "flat" type: "Flatten" bottom: "lrn" top: "flat" flatten_param { axis: 2 } }
layer { name: "resh" type: "Reshape" bottom: "flat" top: "resh" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "slice" type: "Slice" bottom: "resh" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 10 } }
layer { name: "ip" type: "InnerProduct" bottom: "s2" top: "ip" inner_product_param { num_output: 6 } }
layer { name: "ipt" type: "InnerProduct" bottom: "s1" top: "ipt" inner_product_param { num_output: 6 transpose: true } }
layer { name: "scale2" type: "Scale" bottom: "ip" bottom: "aux" top: "scaled2" scale_param { axis: 0 } }
layer { name: "sum" type: "Eltwise" bottom: "scaled2" bottom: "ipt" top: "sum" }
layer { name: "soft" type: "Softmax" bottom: "sum" top: "prob" }
layer { name: "gapflat" type: "Flatten" bottom: "gap" top: "gapflat" }
layer { name: "quiet" type: "Silence" bottom: "maxp" }
"""


def test_every_layer_type_with_overhanging_ceil_pools(tmp_path):
    # 9x11 maps, kernel 3 stride 2 pad 1: the ceil-mode windows overhang the right pad (AVE's divisor rule)
    model, ours, _ = check_export(tmp_path, ZOO, seed=4)
    assert set(ours) == {"prob", "gapflat"}
    ops = {n.op_type for n in model.graph.node}
    assert {"BatchNormalization", "PRelu", "ConvTranspose", "Elu", "Abs", "Pow", "AveragePool", "MaxPool",
            "Concat", "GlobalAveragePool", "LRN", "Split", "Gemm", "Max", "Sum"} <= ops


def test_within_channel_lrn_and_even_pools(tmp_path):
    text = ('name: "w" input: "data" input_shape { dim: 1 dim: 2 dim: 8 dim: 8 } '
            'layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { local_size: 5 alpha: 2 beta: 0.6 norm_region: WITHIN_CHANNEL } } '
            'layer { name: "pool" type: "Pooling" bottom: "lrn" top: "pool" pooling_param { pool: AVE kernel_size: 2 stride: 2 } } '
            'layer { name: "am" type: "ArgMax" bottom: "lrn" top: "am" argmax_param { axis: 1 } }')
    _, ours, theirs = check_export(tmp_path, text)
    assert ours["am"].shape == (1, 1, 8, 8) and set(np.unique(theirs["am"])) <= {0.0, 1.0}


def test_reshape_that_moves_the_batch_axis(tmp_path):
    text = ('name: "r" input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 } '
            'layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { dim: -1 dim: 3 } } } '
            'layer { name: "s" type: "Softmax" bottom: "r" top: "s" }')
    _, ours, _ = check_export(tmp_path, text)
    assert ours["s"].shape == (32, 3)


def test_unsupported_layer_is_one_line_error_naming_it(tmp_path, cli):
    text = ('name: "u" input: "data" input_shape { dim: 1 dim: 2 dim: 5 dim: 5 } '
            'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }')
    (tmp_path / "u.prototxt").write_text(text)
    with pytest.raises(UnsupportedLayer, match="layer pool \\(Pooling\\): cannot be exported"):
        export_onnx(tmp_path / "u.prototxt", None, tmp_path / "u.onnx")
    assert not (tmp_path / "u.onnx").exists()
    r = cli("trainer", "export", str(tmp_path / "u.prototxt"), "-o", str(tmp_path / "u.onnx"))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "layer pool (Pooling)" in lines[0] and "mask" in lines[0]
    loss = ('name: "l" input: "data" input_shape { dim: 1 dim: 3 } input: "label" input_shape { dim: 1 } '
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "loss" }')
    (tmp_path / "l.prototxt").write_text(loss)
    with pytest.raises(UnsupportedLayer, match="layer loss \\(SoftmaxWithLoss\\).*deploy net"):
        export_onnx(tmp_path / "l.prototxt", None, tmp_path / "l.onnx")


def test_cli_onnx_and_safetensors(shared_data, tmp_path, cli):
    lenet = shared_data / "models" / "lenet"
    r = cli("trainer", "export", str(lenet / "lenet.prototxt"), str(lenet / "lenet_iter_10000.caffemodel"),
            "-o", str(tmp_path / "lenet.onnx"), "--mean-value", "33", "--scale", "0.00390625")
    assert r.returncode == 0, r.stderr
    model = onnx.load(tmp_path / "lenet.onnx")
    assert [n.op_type for n in model.graph.node[:2]] == ["Sub", "Mul"]
    net = build_net(lenet / "lenet.prototxt", lenet / "lenet_iter_10000.caffemodel")
    pixels = np.random.default_rng(2).uniform(0, 255, (64, 1, 28, 28)).astype(np.float32)
    theirs = trainer_forward(net, {"data": (pixels - 33) * np.float32(0.00390625)})["prob"]
    (ours,) = ort.InferenceSession(str(tmp_path / "lenet.onnx")).run(["prob"], {"data": pixels})
    assert np.abs(ours - theirs).max() <= TOL

    safetensors = pytest.importorskip("safetensors.numpy", reason="safetensors is not installed")
    r = cli("trainer", "export", str(lenet / "lenet.prototxt"), str(lenet / "lenet_iter_10000.caffemodel"),
            "-o", str(tmp_path / "lenet.safetensors"), "--format", "safetensors")
    assert r.returncode == 0, r.stderr
    tensors = safetensors.load_file(str(tmp_path / "lenet.safetensors"))
    side = json.loads((tmp_path / "lenet.safetensors.json").read_text())
    params = net.param_arrays()
    assert set(tensors) == {f"{layer}.{k}" for layer, arrs in params.items() for k in range(len(arrs))}
    for layer, arrs in params.items():
        for k, arr in enumerate(arrs):
            np.testing.assert_array_equal(tensors[f"{layer}.{k}"], arr)
            entry = side["tensors"][f"{layer}.{k}"]
            assert entry["shape"] == list(arr.shape) and entry["layer"] == layer and entry["index"] == k
    assert side["tensors"]["conv1.0"]["layer_type"] == "Convolution"
    assert side["tensors"]["ip2.1"]["role"] == "bias"
    # the weights file gets the mode the sidecar and the ONNX file get (safetensors' save_file made it 0600)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.glob("lenet.*")}
    assert len(set(modes.values())) == 1, modes
    net.close()


def test_a_mean_with_other_channels_is_named_as_such(tmp_path):
    # ImageNet's 3x256x256 mean on LeNet's 1x28x28 input is larger, not too small: say what is wrong
    from datakit.errors import ConfigError
    from trainer.export_onnx import preprocessing
    with pytest.raises(ConfigError, match=r"mean image has 3 channel\(s\) \(3x256x256\) but the input takes 1"):
        preprocessing(np.zeros((3, 256, 256), np.float32), None, (1, 1, 28, 28))
    with pytest.raises(ConfigError, match="at least that large"):
        preprocessing(np.zeros((1, 20, 20), np.float32), None, (1, 1, 28, 28))


def test_stochastic_pooling_is_its_test_phase_weighted_average(tmp_path):
    """STOCHASTIC pooling at test time is Σx²/(FLT_MIN + Σx): it was exported as an average pool
    (0.7 off on ReLU outputs); windows ignore pad and one past the map gives 0, global too."""
    text = ('name: "s" input: "data" input_shape { dim: 2 dim: 3 dim: 7 dim: 7 } '
            'layer { name: "relu" type: "ReLU" bottom: "data" top: "relu" } '
            'layer { name: "s2" type: "Pooling" bottom: "relu" top: "s2" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 } } '
            'layer { name: "s3" type: "Pooling" bottom: "relu" top: "s3" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 pad: 1 } } '
            'layer { name: "sg" type: "Pooling" bottom: "relu" top: "sg" pooling_param { pool: STOCHASTIC global_pooling: true } }')
    _, ours, theirs = check_export(tmp_path, text, seed=3)
    assert ours["s3"].shape == (2, 3, 4, 4) and ours["sg"].shape == (2, 3, 1, 1)
    assert (theirs["s2"] > 0).any() and (theirs["s3"] == 0).any()   # a window wholly in the zeros gives 0


def test_inner_product_from_a_later_axis_keeps_a_free_batch(tmp_path):
    """InnerProduct with axis 2 (one product per (n, c)): the Reshape after the Gemm copied the
    Gemm's first axis (N·C) as the batch, so ONNX Runtime refused every input."""
    text = ('name: "ip" input: "data" input_shape { dim: 2 dim: 4 dim: 3 dim: 5 } '
            'layer { name: "ip2" type: "InnerProduct" bottom: "data" top: "ip2" inner_product_param { num_output: 6 axis: 2 } } '
            'layer { name: "ip3" type: "InnerProduct" bottom: "data" top: "ip3" inner_product_param { num_output: 2 axis: 3 transpose: true } }')
    _, ours, _ = check_export(tmp_path, text, seed=5)
    assert ours["ip2"].shape == (2, 4, 6) and ours["ip3"].shape == (2, 4, 3, 2)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    ip2, ip3 = sess.run(["ip2", "ip3"], {"data": np.ones((5, 4, 3, 5), np.float32)})
    assert ip2.shape == (5, 4, 6) and ip3.shape == (5, 4, 3, 2)
