"""`trainer test`, `trainer time`, `trainer classify` run as a user runs them, on real databases."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from datakit.formats import caffe_pb2
from trainer.net import Net
from trainer.weights import save_weights

N_IMAGES, BATCH, CLASSES = 30, 10, 3

NET = '''
name: "tiny"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ scale: 0.5 }}
  data_param {{ source: "{source}" batch_size: {batch} backend: {backend} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: {classes} weight_filler {{ type: "gaussian" std: 0.01 }}
    bias_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" }}
'''


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tests.conftest import run_cli
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(5)
    (root / "img").mkdir()
    images, labels, lines = [], [], []
    for i in range(N_IMAGES):
        img = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "img" / f"{i:03d}.png"), img)
        images.append(img.transpose(2, 0, 1))  # BGR C×H×W, as Caffe stores it
        labels.append(i % CLASSES)
        lines.append(f"{i:03d}.png {i % CLASSES}\n")
    (root / "list.txt").write_text("".join(lines))
    for backend in ("lmdb", "leveldb"):
        res = run_cli("datakit", "convert", str(root / "img"), str(root / "list.txt"),
                      str(root / f"db_{backend}"), "--backend", backend, "--no-progress", cwd=root)
        assert res.returncode == 0, res.stderr
    return root, np.stack(images).astype(np.float64), np.array(labels)


def _write_net(root: Path, backend: str) -> tuple[Path, Path, Net]:
    text = NET.format(source=f"db_{backend}", batch=BATCH, backend=backend.upper(), classes=CLASSES)
    model = root / f"net_{backend}.prototxt"
    model.write_text(text)
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TEST, seed=3, base_dir=str(root))
    weights = root / f"w_{backend}.caffemodel"
    save_weights(net, weights)
    net.close()  # LevelDB admits one process at a time: let the CLI open it
    return model, weights, net


def _expected(net: Net, images: np.ndarray, labels: np.ndarray, iterations: int) -> tuple[float, float]:
    w = net.layer("ip").blobs[0].data.astype(np.float64)
    b = net.layer("ip").blobs[1].data.astype(np.float64)
    losses, accs = [], []
    for it in range(iterations):
        idx = np.arange(it * BATCH, (it + 1) * BATCH) % N_IMAGES  # the database wraps around
        x = (images[idx] * 0.5).reshape(BATCH, -1)
        s = x @ w.T + b
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        y = labels[idx]
        losses.append(-np.log(p[np.arange(BATCH), y]).mean())
        accs.append((s.argmax(1) == y).mean())
    return float(np.mean(losses)), float(np.mean(accs))


def _final(stdout: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"^(\w+) = ([-\d.e+]+)$", stdout, flags=re.M)}


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_trainer_test_averages_outputs_over_batches(dataset, backend, cli):
    root, images, labels = dataset
    model, weights, net = _write_net(root, backend)
    res = cli("trainer", "test", "--model", str(model), "--weights", str(weights), "--iterations", "4",
              "--device", "cpu", "--report", "out.json", cwd=root)
    assert res.returncode == 0, res.stderr
    loss, acc = _expected(net, images, labels, 4)
    final = _final(res.stdout)
    assert final["loss"] == pytest.approx(loss, rel=1e-5)
    assert final["accuracy"] == pytest.approx(acc, abs=1e-6)
    assert len(re.findall(r"^Batch \d+, loss = ", res.stdout, flags=re.M)) == 4
    assert "copied 1 layer" in res.stderr
    assert (root / "out.json").is_file()


def test_trainer_test_shape_mismatch_is_one_clear_line(dataset, cli, tmp_path):
    root, _, _ = dataset
    model, _, _ = _write_net(root, "lmdb")
    other = Net(text_format.Parse(NET.format(source="db_lmdb", batch=BATCH, backend="LMDB", classes=CLASSES + 1),
                                  caffe_pb2.NetParameter()), caffe_pb2.TEST, base_dir=str(root))
    bad = tmp_path / "bad.caffemodel"
    save_weights(other, bad)
    other.close()
    res = cli("trainer", "test", "--model", str(model), "--weights", str(bad), "--iterations", "1", cwd=root)
    assert res.returncode != 0
    err = res.stderr.strip().splitlines()
    assert len(err) == 1
    assert re.search(r"layer ip: .*blob 0 has shape \(4,90\), net expects \(3,90\)", err[0])


def test_trainer_test_missing_database_names_it(dataset, cli, tmp_path):
    root, _, _ = dataset
    model, weights, _ = _write_net(root, "lmdb")
    res = cli("trainer", "test", "--model", str(model), "--weights", str(weights), cwd=tmp_path)
    assert res.returncode != 0
    assert "db_lmdb" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_trainer_time_prints_caffe_style_table(dataset, cli):
    root, _, _ = dataset
    model, _, _ = _write_net(root, "lmdb")
    res = cli("trainer", "time", "--model", str(model), "--iterations", "2", "--device", "cpu", cwd=root)
    assert res.returncode == 0, res.stderr
    for name in ("data", "ip", "loss"):
        assert re.search(rf"^\s*{name}\tforward: [\d.]+ ms\.$", res.stdout, flags=re.M)
        assert re.search(rf"^\s*{name}\tbackward: [\d.]+ ms\.$", res.stdout, flags=re.M)
    for line in ("Average Forward pass", "Average Backward pass", "Average Forward-Backward", "Total Time"):
        assert re.search(rf"^{line}: [\d.]+ ms\.$", res.stdout, flags=re.M)


def test_trainer_time_deploy_net_runs_backward_everywhere(cli, tmp_path):
    model = tmp_path / "deploy.prototxt"
    model.write_text('''
    layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { kernel_size: 2 stride: 2 } }
    layer { name: "prob" type: "Softmax" bottom: "pool" top: "prob" }
    ''')
    res = cli("trainer", "time", "--model", str(model), "--iterations", "1", "--batch-size", "3",
              "--report", str(tmp_path / "t.json"), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    import json
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["batch_size"] == 3
    by_name = {layer["name"]: layer for layer in data["layers"]}
    assert by_name["conv"]["backward_ms"] > 0 and by_name["in"]["backward_ms"] == 0


def test_oversample_gives_caffes_ten_crops():
    from trainer.classify import center_crop, oversample
    img = np.arange(5 * 6 * 1, dtype=np.float32).reshape(5, 6, 1)
    crops = oversample([img], (3, 4))
    assert crops.shape == (10, 3, 4, 1)
    np.testing.assert_array_equal(crops[0], img[0:3, 0:4])
    np.testing.assert_array_equal(crops[1], img[0:3, 2:6])
    np.testing.assert_array_equal(crops[2], img[2:5, 0:4])
    np.testing.assert_array_equal(crops[3], img[2:5, 2:6])
    np.testing.assert_array_equal(crops[4], img[1:4, 1:5])
    np.testing.assert_array_equal(crops[9], img[1:4, 1:5][:, ::-1])
    np.testing.assert_array_equal(center_crop([img], (3, 4))[0], crops[4])


def test_classify_color_pipeline_and_names(cli, tmp_path):
    """A 1x1-conv 'net' that outputs the mean-subtracted B,G,R means: checks swap, scale, mean, names."""
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 200, 60  # B, G, R as OpenCV stores them
    cv2.imwrite(str(tmp_path / "x.png"), img)
    text = '''
    layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 2 dim: 2 } } }
    layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: AVE global_pooling: true } }
    layer { name: "fl" type: "Flatten" bottom: "pool" top: "out" }
    '''
    model = tmp_path / "deploy.prototxt"
    model.write_text(text)
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TEST)
    save_weights(net, tmp_path / "w.caffemodel")
    (tmp_path / "names.txt").write_text("blue\ngreen\nred\n")
    res = cli("trainer", "classify", str(tmp_path / "x.png"), "--model", str(model),
              "--weights", str(tmp_path / "w.caffemodel"), "--mean-value", "5,100,10",
              "--labels", str(tmp_path / "names.txt"), "--top-k", "3", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    rows = re.findall(r"^  \d\. ([\d.]+)  \[(\d)\]  (\w+)$", res.stdout, flags=re.M)
    assert [(float(v), int(i), n) for v, i, n in rows] == [(100.0, 1, "green"), (50.0, 2, "red"), (5.0, 0, "blue")]
    res = cli("trainer", "classify", str(tmp_path / "x.png"), "--model", str(model),
              "--weights", str(tmp_path / "w.caffemodel"), "--mean-value", "5,100,10", "--top-k", "1",
              "--device", "cpu", "--json", str(tmp_path / "p.json"))
    assert res.returncode == 0, res.stderr
    from tests.pty_cli import assert_one_report_format
    [only] = assert_one_report_format(tmp_path / "p.json")  # --json: the one --report format
    assert only["image"] == str(tmp_path / "x.png") and only["top"][0]["class"] == 1 and only["top"][0]["prob"] == 100.0


def test_trainer_test_refuses_a_deploy_net(cli, shared_data):
    root = Path(__file__).resolve().parents[1]
    res = cli("trainer", "test", "--model", str(root / "models/lenet/lenet_deploy.prototxt"),
              "--weights", str(shared_data / "models/lenet/lenet_iter_10000.caffemodel"), "--iterations", "1")
    assert res.returncode != 0
    assert "Input layers" in res.stderr and "train_val" in res.stderr


def test_test_net_keeps_scored_batches_on_ctrl_c():
    from trainer.evaluate import score_net as test_net
    text = '''
    layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 2 dim: 3 }
            data_filler { type: "constant" value: 2 } } }
    layer { name: "p" type: "Power" bottom: "x" top: "y" power_param { power: 2 } }
    '''
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TEST)

    def stop_after_two(it, outs):
        if it == 1:
            raise KeyboardInterrupt

    result = test_net(net, 10, stop_after_two)
    assert result.interrupted and result.iterations == 2
    np.testing.assert_allclose(result.means["y"], np.full((2, 3), 4.0))


def test_output_sums_average_element_wise_in_float64():
    from trainer.evaluate import OutputSums
    sums = OutputSums()
    first = np.array([1.0, 2.0], np.float32)
    sums.add({"acc": np.float32(0.5), "per_class": first})
    first[...] = 100.0                        # the sums hold their own copy
    sums.add({"acc": np.float32(0.25), "per_class": np.array([3.0, 6.0], np.float32)})
    means = sums.means()
    assert sums.count == 2 and means["acc"] == 0.375 and means["acc"].dtype == np.float64
    np.testing.assert_array_equal(means["per_class"], [2.0, 4.0])


def test_trainer_time_bar_follows_the_one_policy_and_the_report_the_one_format(cli, tmp_path):
    """A bar on a terminal or with --progress, none with --no-progress or off a terminal; --report as write_report."""
    from tests.pty_cli import assert_one_report_format, run_on_terminal
    model = tmp_path / "deploy.prototxt"
    model.write_text('layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }\n'
                     'layer { name: "prob" type: "Softmax" bottom: "data" top: "prob" }\n')
    base = ("trainer", "time", "--model", str(model), "--iterations", "3", "--device", "cpu")
    rc, out, term = run_on_terminal(*base, "--report", str(tmp_path / "t.json"))
    assert rc == 0, term
    assert "3/3" in term and "iter" in term and "Average Forward pass" in out
    assert assert_one_report_format(tmp_path / "t.json")["iterations"] == 3
    rc, _, term = run_on_terminal(*base, "--no-progress")
    assert rc == 0 and "3/3" not in term
    piped = cli(*base)
    assert piped.returncode == 0 and "3/3" not in piped.stderr
    forced = cli(*base, "--progress")
    assert forced.returncode == 0 and "3/3" in forced.stderr
