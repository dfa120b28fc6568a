"""A net mixing the catalogue's new layers trains (loss falls) on NumPy and on the CuPy path
(tests/strict_xp.py), with the same losses and weights on both."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from datakit.formats.blobproto import write_binaryproto
from datakit.formats.caffemodel import caffemodel_blobs, read_caffemodel
from tests import strict_xp
from trainer.fit import FitOptions, fit

NET = '''name: "catalogue"
layer { name: "h5" type: "HDF5Data" top: "data" top: "label" top: "cont" top: "words" top: "target" top: "sim" top: "perm"
  hdf5_data_param { source: "h5.txt" batch_size: 4 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3
  pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bnll" type: "BNLL" bottom: "conv" top: "bnll" }
layer { name: "mvn" type: "MVN" bottom: "bnll" top: "mvn" }
layer { name: "stoch" type: "Pooling" bottom: "bnll" top: "stoch" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 } }
layer { name: "spp" type: "SPP" bottom: "mvn" top: "spp" spp_param { pyramid_height: 2 } }
layer { name: "bias" type: "Bias" bottom: "spp" top: "biased" bias_param { filler { type: "gaussian" std: 0.1 } } }
layer { name: "exp" type: "Exp" bottom: "biased" top: "e" exp_param { base: 2 scale: -0.2 } }
layer { name: "log" type: "Log" bottom: "e" top: "lg" log_param { shift: 1 } }
layer { name: "tile" type: "Tile" bottom: "stoch" top: "tiled" tile_param { tiles: 2 } }
layer { name: "ref" type: "Pooling" bottom: "tiled" top: "ref" pooling_param { pool: MAX kernel_size: 2 stride: 1 } }
layer { name: "crop" type: "Crop" bottom: "tiled" bottom: "ref" top: "cropped" crop_param { offset: 1 } }
layer { name: "red" type: "Reduction" bottom: "cropped" top: "red" reduction_param { operation: SUMSQ axis: 2 coeff: 0.1 } }
layer { name: "red2" type: "Reduction" bottom: "mvn" top: "red2" reduction_param { operation: ASUM axis: 2 coeff: 0.01 } }
layer { name: "embed" type: "Embed" bottom: "words" top: "emb" embed_param { num_output: 5 input_dim: 10
  weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "lstm" type: "LSTM" bottom: "emb" bottom: "cont" top: "lstm" recurrent_param { num_output: 3
  weight_filler { type: "uniform" min: -0.3 max: 0.3 } } }
layer { name: "rnn" type: "RNN" bottom: "emb" bottom: "cont" top: "rnn" recurrent_param { num_output: 3
  weight_filler { type: "uniform" min: -0.3 max: 0.3 } } }
layer { name: "lstm_flat" type: "Reshape" bottom: "lstm" top: "lstm_flat" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "rnn_flat" type: "Reshape" bottom: "rnn" top: "rnn_flat" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "clip" type: "Clip" bottom: "lg" top: "lg_c" clip_param { min: -2 max: 2 } }
layer { name: "swish" type: "Swish" bottom: "red" top: "red_s" swish_param { beta: 1.5 } }
layer { name: "im2col" type: "Im2col" bottom: "data" top: "cols" convolution_param { kernel_size: 2 stride: 2 } }
layer { name: "red3" type: "Reduction" bottom: "cols" top: "red3" reduction_param { operation: MEAN axis: 2 } }
layer { name: "cat" type: "Concat" bottom: "lg_c" bottom: "red_s" bottom: "red2" bottom: "red3" bottom: "lstm_flat"
  bottom: "rnn_flat" top: "cat0" }
layer { name: "reindex" type: "BatchReindex" bottom: "cat0" bottom: "perm" top: "cat" }
layer { name: "py" type: "Python" bottom: "cat" top: "cat_s" python_param { module: "pycaffe_layers" layer: "ScaleBy" param_str: "0.8" } }
layer { name: "fc" type: "InnerProduct" bottom: "cat_s" top: "scores" inner_product_param { num_output: 3
  weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pyfc" type: "Python" bottom: "cat_s" top: "pair" python_param { module: "pycaffe_layers" layer: "Affine" param_str: "4" } }
layer { name: "pair_slice" type: "Slice" bottom: "pair" top: "pa" top: "pb" slice_param { axis: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "scores" bottom: "label" top: "loss" }
layer { name: "hinge" type: "HingeLoss" bottom: "scores" bottom: "label" top: "hinge" loss_weight: 0.2 hinge_loss_param { norm: L2 } }
layer { name: "prob" type: "Softmax" bottom: "scores" top: "prob" }
layer { name: "mll" type: "MultinomialLogisticLoss" bottom: "prob" bottom: "label" top: "mll" loss_weight: 0.2 }
layer { name: "info" type: "InfogainLoss" bottom: "scores" bottom: "label" top: "info" loss_weight: 0.2
  infogain_loss_param { source: "H.binaryproto" } }
layer { name: "offset" type: "Parameter" top: "offset" parameter_param { shape { dim: 4 dim: 3 } } }
layer { name: "scores2" type: "Eltwise" bottom: "scores" bottom: "offset" top: "scores2" }
layer { name: "sce" type: "SigmoidCrossEntropyLoss" bottom: "scores2" bottom: "target" top: "sce" loss_weight: 0.2 }
layer { name: "contrastive" type: "ContrastiveLoss" bottom: "pa" bottom: "pb" bottom: "sim" top: "contrastive"
  loss_weight: 0.2 contrastive_loss_param { margin: 2 } }
layer { name: "th" type: "Threshold" bottom: "scores" top: "th" threshold_param { threshold: 0.1 } }
layer { name: "out" type: "HDF5Output" bottom: "th" bottom: "label" hdf5_output_param { file_name: "out.h5" } }
'''


def make_project(folder: Path, name: str) -> str:
    import h5py
    folder.mkdir()
    rng = np.random.default_rng(0)
    n = 16
    label = rng.integers(0, 3, n)
    data = rng.standard_normal((n, 3, 6, 6)) + label[:, None, None, None]  # the class shows in the data
    with h5py.File(folder / "d.h5", "w") as h:
        h["data"] = data.astype(np.float32)
        h["label"] = label.astype(np.float32)
        h["cont"] = np.array([[0, 0], [1, 1], [1, 0], [1, 1]] * 4, np.float32)
        h["words"] = rng.integers(0, 10, (n, 2)).astype(np.float32)
        h["target"] = (np.eye(3)[label] > 0).astype(np.float32)
        h["sim"] = (np.arange(n) % 2).astype(np.float32)
        h["perm"] = np.array([0, 1, 2, 3] * 4, np.float32)  # BatchReindex: identity within each batch of 4
    (folder / "h5.txt").write_text(f"{folder / 'd.h5'}\n")
    write_binaryproto(folder / "H.binaryproto", (np.eye(3) + 0.1).astype(np.float32))
    shutil.copy(Path(__file__).parent / "pylayers/pycaffe_layers.py", folder / "pycaffe_layers.py")
    (folder / "net.prototxt").write_text(NET)
    (folder / "solver.prototxt").write_text(
        f'net: "net.prototxt"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 40\ndisplay: 1\n'
        f'random_seed: 3\nsnapshot: 40\nsnapshot_prefix: "{name}"\n')
    return str(folder / "solver.prototxt")


def train(folder: Path, device: str, monkeypatch) -> list[float]:
    solver = make_project(folder, "snap")
    monkeypatch.chdir(folder)
    result = fit(FitOptions(solver=solver, device=device, stream=io.StringIO(), handle_signals=False))
    return [v for _, v in result.train_losses]


def test_a_net_of_the_new_layers_trains_on_numpy_and_on_the_cupy_path(tmp_path, monkeypatch):
    import h5py
    cpu = train(tmp_path / "cpu", "cpu", monkeypatch)
    assert np.mean(cpu[-8:]) < 0.5 * np.mean(cpu[:8])
    with strict_xp.installed():
        gpu = train(tmp_path / "gpu", "gpu", monkeypatch)
    np.testing.assert_allclose(gpu, cpu, rtol=2e-4)
    a = caffemodel_blobs(read_caffemodel(tmp_path / "cpu/snap_iter_40.caffemodel"))
    b = caffemodel_blobs(read_caffemodel(tmp_path / "gpu/snap_iter_40.caffemodel"))
    assert {"bias", "embed", "lstm", "rnn", "pyfc", "offset"} <= set(a)
    for layer, arrays in a.items():
        for x, y in zip(arrays, b[layer]):
            np.testing.assert_allclose(y, x, rtol=2e-3, atol=1e-5, err_msg=layer)
    for side in ("cpu", "gpu"):
        with h5py.File(tmp_path / side / "out.h5", "r") as h:
            rows = h["label"].shape[0]   # every batch the net saw: 40 iterations and the final display forward
            assert h["data"].shape == (rows, 3) and rows in (40 * 4, 41 * 4)


@pytest.mark.parametrize("phase", [0, 1])
def test_forward_backward_of_the_mix_matches_numpy_on_the_strict_device(tmp_path, monkeypatch, phase):
    from datakit.formats.prototxt import parse_net
    from tests.test_device_strict import assert_nets_agree
    from trainer.net import Net
    make_project(tmp_path / "p", "snap")
    monkeypatch.chdir(tmp_path / "p")
    nets = []
    for xp in (np, strict_xp):
        ctx = strict_xp.installed() if xp is strict_xp else None
        if ctx:
            ctx.__enter__()
        try:
            text = "force_backward: true\n" + NET.replace("out.h5", f"out_{len(nets)}.h5")  # one writer per file
            net = Net(parse_net(text), phase, xp=xp, seed=0, source="net.prototxt")
            net.clear_param_diffs()
            net.forward()
            net.backward()
            nets.append(net)
        finally:
            if ctx:
                ctx.__exit__(None, None, None)
    assert isinstance(nets[1].blobs["lstm"].data, strict_xp.DeviceArray)
    assert_nets_agree(nets[0], nets[1], np.float32)
    for net in nets:
        net.close()


# The parameter combinations the training net above does not reach, checked blob by blob on the strict device.
MORE = '''force_backward: true
layer { name: "in" type: "Input" top: "x" top: "seq" top: "cont" top: "static" top: "h0" top: "c0" top: "label"
  top: "sel" top: "H" top: "bias" top: "target"
  input_param { shape { dim: 4 dim: 3 dim: 5 dim: 5 } shape { dim: 3 dim: 4 dim: 2 } shape { dim: 3 dim: 4 }
    shape { dim: 4 dim: 2 } shape { dim: 1 dim: 4 dim: 3 } shape { dim: 1 dim: 4 dim: 3 } shape { dim: 4 }
    shape { dim: 4 } shape { dim: 3 dim: 3 } shape { dim: 5 dim: 5 } shape { dim: 4 dim: 3 } } }
layer { name: "mvn" type: "MVN" bottom: "x" top: "mvn" mvn_param { across_channels: true normalize_variance: false } }
layer { name: "bias2" type: "Bias" bottom: "mvn" bottom: "bias" top: "b2" bias_param { axis: 2 } }
layer { name: "exp" type: "Exp" bottom: "b2" top: "e" exp_param { scale: 0.1 shift: 0.2 } }
layer { name: "log" type: "Log" bottom: "e" top: "lg" }
layer { name: "ref" type: "Pooling" bottom: "lg" top: "ref" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "crop" type: "Crop" bottom: "lg" bottom: "ref" top: "crop" crop_param { axis: 1 offset: 0 offset: 1 offset: 2 } }
layer { name: "tile" type: "Tile" bottom: "crop" top: "tile" tile_param { axis: 0 tiles: 2 } }
layer { name: "red" type: "Reduction" bottom: "tile" top: "red" reduction_param { operation: MEAN axis: 1 } }
layer { name: "red_sum" type: "Reduction" bottom: "red" top: "red_sum" reduction_param { operation: SUM } loss_weight: 0.01 }
layer { name: "stoch" type: "Pooling" bottom: "e" top: "stoch" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 } }
layer { name: "spp" type: "SPP" bottom: "e" top: "spp" spp_param { pyramid_height: 1 pool: AVE } }
layer { name: "lstm" type: "LSTM" bottom: "seq" bottom: "cont" bottom: "static" bottom: "h0" bottom: "c0" top: "lstm"
  top: "hT" top: "cT" recurrent_param { num_output: 3 expose_hidden: true weight_filler { type: "gaussian" std: 0.3 }
  bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "rnn" type: "RNN" bottom: "seq" bottom: "cont" bottom: "static" bottom: "h0" top: "rnn" top: "rT"
  recurrent_param { num_output: 3 expose_hidden: true weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "gates" type: "Tile" bottom: "hT" top: "gates" tile_param { axis: 2 tiles: 4 } }
layer { name: "cont1" type: "Reshape" bottom: "label" top: "cont1" reshape_param { shape { dim: 1 dim: 4 } } }
layer { name: "unit" type: "LSTMUnit" bottom: "c0" bottom: "gates" bottom: "cont1" top: "c1" top: "h1" }
layer { name: "flat" type: "Reshape" bottom: "h1" top: "flat" reshape_param { shape { dim: 4 dim: 3 } } }
layer { name: "filter" type: "Filter" bottom: "flat" bottom: "label" bottom: "sel" top: "kept" top: "kept_label" }
layer { name: "info" type: "InfogainLoss" bottom: "kept" bottom: "kept_label" bottom: "H" top: "info"
  loss_param { ignore_label: 2 normalization: FULL } }
layer { name: "sce" type: "SigmoidCrossEntropyLoss" bottom: "flat" bottom: "target" top: "sce" loss_param { ignore_label: -1 } }
layer { name: "hinge" type: "HingeLoss" bottom: "flat" bottom: "label" top: "hinge" }
layer { name: "sil" type: "Silence" bottom: "stoch" bottom: "spp" bottom: "lstm" bottom: "rnn" bottom: "rT" bottom: "cT" bottom: "c1" }
'''

MORE_INPUTS = {"x": lambda r: r.standard_normal((4, 3, 5, 5)), "seq": lambda r: r.standard_normal((3, 4, 2)),
               "cont": lambda r: np.array([[0, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1]]),
               "static": lambda r: r.standard_normal((4, 2)), "h0": lambda r: r.standard_normal((1, 4, 3)),
               "c0": lambda r: r.standard_normal((1, 4, 3)), "label": lambda r: np.array([0, 2, 1, 1]),
               "sel": lambda r: np.array([1, 0, 1, 1]), "H": lambda r: np.eye(3) + r.uniform(0, 0.5, (3, 3)),
               "bias": lambda r: r.standard_normal((5, 5)),
               "target": lambda r: np.where(r.uniform(size=(4, 3)) < 0.2, -1, r.uniform(size=(4, 3)) > 0.5)}


@pytest.mark.parametrize("phase", [0, 1])
def test_more_parameter_combinations_match_numpy_on_the_strict_device(phase):
    from datakit.formats.prototxt import parse_net
    from tests.test_device_strict import assert_nets_agree
    from trainer.net import Net
    nets = []
    for xp in (np, strict_xp):
        with strict_xp.installed():
            net = Net(parse_net(MORE), phase, xp=xp, seed=0, dtype=np.float64)
            rng = np.random.default_rng(1)
            for name in net.input_names:
                net.blobs[name].data[...] = xp.asarray(np.asarray(MORE_INPUTS[name](rng), np.float64))
            net.clear_param_diffs()
            net.forward()
            net.backward()
            nets.append(net)
    assert nets[1].blobs["kept"].shape == (3, 3)
    assert_nets_agree(nets[0], nets[1], np.float64)
