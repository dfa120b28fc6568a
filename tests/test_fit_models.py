"""The models we ship: Flickr Style fine-tune, LeNet solver, and the demo nets trained for real."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from datakit.formats.datum import encode_datum
from datakit.db.lmdb_backend import LmdbWriter
from datakit.formats import caffe_pb2
from datakit.formats.blobproto import write_mean
from datakit.formats.prototxt import read_net, read_solver
from datakit.mirror import synthetic_image
from trainer.fit import FitOptions, fit

MODELS = Path(__file__).resolve().parents[1] / "models"


def _layers(net):
    return {l.name: l for l in net.layer}


def test_flickr_style_recipe():
    solver = read_solver(MODELS / "finetune_flickr_style/solver.prototxt")
    assert (solver.base_lr, solver.lr_policy, solver.gamma, solver.stepsize) == (pytest.approx(0.001), "step",
                                                                                 pytest.approx(0.1), 20000)
    assert (solver.max_iter, solver.momentum, solver.test_iter[0]) == (100000, pytest.approx(0.9), 100)
    for name in ("train_val", "deploy"):
        net = read_net(MODELS / f"finetune_flickr_style/{name}.prototxt")
        layers = _layers(net)
        fc8 = layers["fc8_flickr"]
        assert fc8.inner_product_param.num_output == 20
        assert [p.lr_mult for p in fc8.param] == [10, 20]
        assert "fc8" not in layers and [p.lr_mult for p in layers["fc7"].param] == [1, 2]
        assert layers["conv2"].convolution_param.group == 2
    deploy = read_net(MODELS / "finetune_flickr_style/deploy.prototxt")
    assert deploy.layer[0].type == "Input" and deploy.layer[-1].type == "Softmax"
    assert not any(l.type in ("Data", "Dropout", "SoftmaxWithLoss") for l in deploy.layer)
    tv = _layers(read_net(MODELS / "finetune_flickr_style/train_val.prototxt"))
    assert tv["data"].transform_param.crop_size == 227


def test_lenet_solver_is_caffes():
    s = read_solver(MODELS / "lenet/lenet_solver.prototxt")
    assert (s.base_lr, s.momentum, s.weight_decay, s.lr_policy, s.gamma, s.power, s.max_iter) == (
        pytest.approx(0.01), pytest.approx(0.9), pytest.approx(0.0005), "inv", pytest.approx(1e-4),
        pytest.approx(0.75), 10000)
    assert (MODELS / "lenet" / s.net).is_file()


def _demo_db(path: Path, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    items, total = [], np.zeros((3, 72, 72))
    for i in range(n):
        label = i % 5
        jpg = synthetic_image(f"{path.name}/{i}.jpg", label, seed)
        img = cv2.resize(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), (72, 72))
        chw = np.ascontiguousarray(img.transpose(2, 0, 1))
        total += chw
        items.append((f"{i:08d}_{i}.jpg".encode(), encode_datum(chw, label)))
    order = rng.permutation(n)
    LmdbWriter(path).write([(f"{j:08d}".encode() + items[k][0][8:], items[k][1]) for j, k in enumerate(order)])
    return (total / n).astype(np.float32)


def test_demo_scratch_solver_is_the_finetune_solver_but_for_its_snapshots():
    """The demo's comparison is fair only if nothing but the starting weights differs."""
    from datakit.formats.prototxt import read_solver
    tuned, scratch = (read_solver(MODELS / f"demo/{n}.prototxt") for n in ("demo_finetune_solver", "demo_scratch_solver"))
    assert tuned.snapshot_prefix != scratch.snapshot_prefix
    scratch.snapshot_prefix = tuned.snapshot_prefix
    assert scratch == tuned


def test_demo_nets_train_and_finetune(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mean("mean.binaryproto", _demo_db(tmp_path / "train_lmdb", 200, 0))
    _demo_db(tmp_path / "test_lmdb", 100, 1)
    # The shipped solvers, with fewer test batches (the nets and every other setting as shipped).
    for name in ("demo_solver", "demo_finetune_solver"):
        text = (MODELS / f"demo/{name}.prototxt").read_text()
        text = text.replace('net: "demo_', f'net: "{MODELS}/demo/demo_').replace("test_iter: 7", "test_iter: 2")
        assert "test_iter: 2" in text and str(MODELS) in text
        (tmp_path / f"{name}.prototxt").write_text(text)
    scratch = fit(FitOptions(solver="demo_solver.prototxt", device="cpu", max_iter=40,
                             stream=io.StringIO(), handle_signals=False))
    assert scratch.test_scores[0]["accuracy"] > 0.5   # chance is 0.2
    log = io.StringIO()
    tuned = fit(FitOptions(solver="demo_finetune_solver.prototxt", device="cpu", max_iter=20,
                           weights="snapshots/demo_iter_40.caffemodel", stream=log, handle_signals=False))
    assert "initialised layer fc_style_ft" in log.getvalue() and "copied layer conv1" in log.getvalue()
    assert tuned.test_scores[0]["accuracy"] > 0.5
    assert (tmp_path / "snapshots/demo_finetune_iter_20.caffemodel").is_file()
    deploy = read_net(MODELS / "demo/demo_deploy.prototxt")
    from trainer.net import Net
    from trainer.weights import load_weights
    net = Net(deploy, caffe_pb2.TEST)
    report = load_weights(net, tmp_path / "snapshots/demo_iter_40.caffemodel")
    assert set(report.copied) == {"conv1", "conv2", "fc1", "fc_style"}
