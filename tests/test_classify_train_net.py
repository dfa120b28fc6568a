"""`trainer classify --train-net` and the board's model page: the preprocessing a net was trained
with, read from its training prototxt's data layer (trainer.classify_train_net)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from datakit.errors import ConfigError
from datakit.formats import caffe_pb2
from datakit.formats.blobproto import write_mean
from tests.test_classify_deploy_net import TRAIN_VAL
from trainer.classify_train_net import preprocessing_from_train_net
from trainer.net import Net
from trainer.weights import save_weights

ROOT = Path(__file__).resolve().parents[1]

DEPLOY = '''
name: "d"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
'''


def _train_net(tmp_path: Path, transform: str, name: str = "train_val.prototxt", train_transform: str = "") -> Path:
    """TRAIN_VAL with ``transform`` in its TEST data layer (``train_transform`` in its TRAIN one)."""
    text = TRAIN_VAL.replace('include { phase: TEST }\n  data_param',
                             f'include {{ phase: TEST }}\n  transform_param {{ {transform} }}\n  data_param')
    text = text.replace('include { phase: TRAIN }\n  data_param',
                        f'include {{ phase: TRAIN }}\n  transform_param {{ {train_transform} }}\n  data_param')
    assert text.count("transform_param") == 2
    path = tmp_path / name
    path.write_text(text)
    return path


def test_scale_mean_value_and_mirror_become_classify_options(tmp_path):
    pre = preprocessing_from_train_net(_train_net(tmp_path, "scale: 0.5 mean_value: 10 mean_value: 20 "
                                                            "mean_value: 30", train_transform="mirror: true"))
    assert (pre.raw_scale, pre.input_scale, pre.oversample) == (255.0, 0.5, True)
    assert pre.mean.tolist() == [10, 20, 30] and pre.mean_source == "mean_value"
    assert "layer mnist (Data, TEST)" in pre.source
    plain = preprocessing_from_train_net(_train_net(tmp_path, "crop_size: 4 mirror: true", train_transform="scale: 2"))
    assert (plain.input_scale, plain.mean, plain.oversample) == (None, None, False)   # the TEST layer's scale


def test_the_mean_file_is_looked_for_in_the_current_folder_then_beside_the_net(tmp_path, monkeypatch):
    nets = tmp_path / "nets"
    nets.mkdir()
    net = _train_net(nets, 'mean_file: "m.binaryproto"')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"mean_file m\.binaryproto is not at m\.binaryproto or .*nets/m\.binaryproto"):
        preprocessing_from_train_net(net)
    assert preprocessing_from_train_net(net, with_mean=False).mean is None   # the caller has its own
    write_mean(nets / "m.binaryproto", np.full((3, 8, 8), 7, np.float32))
    assert preprocessing_from_train_net(net).mean_source == str(nets / "m.binaryproto")
    write_mean(tmp_path / "m.binaryproto", np.full((3, 8, 8), 9, np.float32))   # Caffe's place comes first
    pre = preprocessing_from_train_net(net)
    assert pre.mean_source == "m.binaryproto" and float(pre.mean.mean()) == 9


def test_nets_that_cannot_say_are_one_clear_error(tmp_path):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    with pytest.raises(ConfigError, match="deploy.prototxt: no data layer in this net; --train-net wants the train_val"):
        preprocessing_from_train_net(deploy)
    hdf5 = tmp_path / "h5.prototxt"
    hdf5.write_text('layer { name: "d" type: "HDF5Data" top: "data" top: "label" '
                    'hdf5_data_param { source: "x.txt" batch_size: 2 } }')
    with pytest.raises(ConfigError, match="data layer d is HDF5Data, which feeds values as they were stored"):
        preprocessing_from_train_net(hdf5)


def _model(tmp_path: Path, transform: str, train_transform: str = "") -> Path:
    """A 3-class colour deploy net with weights, and its train net in tmp_path."""
    save_weights(Net(text_format.Parse(DEPLOY, caffe_pb2.NetParameter()), caffe_pb2.TEST), tmp_path / "w.caffemodel")
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    cv2.imwrite(str(tmp_path / "x.png"), np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return _train_net(tmp_path, transform, train_transform=train_transform)


def test_cli_options_win_over_the_train_net(cli, tmp_path):
    _model(tmp_path, "scale: 0.01 mean_value: 100", train_transform="mirror: true scale: 0.01 mean_value: 100")
    base = ["trainer", "classify", "x.png", "--model", "deploy.prototxt", "--weights", "w.caffemodel",
            "--device", "cpu", "--top-k", "3"]
    taken = cli(*base, "--train-net", "train_val.prototxt", cwd=tmp_path)
    by_hand = cli(*base, "--input-scale", "0.01", "--mean-value", "100", cwd=tmp_path)   # 10 crops: the default
    assert taken.returncode == by_hand.returncode == 0, taken.stderr + by_hand.stderr
    assert taken.stdout == by_hand.stdout
    assert "10 crops (trained with mirror)" in taken.stderr
    overridden = cli(*base, "--train-net", "train_val.prototxt", "--center-only", "--input-scale", "0.02",
                     "--mean-value", "5", cwd=tmp_path)
    by_hand = cli(*base, "--center-only", "--input-scale", "0.02", "--mean-value", "5", cwd=tmp_path)
    assert overridden.returncode == 0, overridden.stderr
    assert overridden.stdout == by_hand.stdout != taken.stdout
    assert "the mean given" in overridden.stderr
    missing = cli(*base, "--train-net", "nosuch.prototxt", cwd=tmp_path)
    assert missing.returncode != 0 and "nosuch.prototxt" in missing.stderr and "Traceback" not in missing.stderr


@pytest.fixture
def lenet_model(shared_data, tmp_path):
    folder = tmp_path / "models" / "lenet"
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "models/lenet/lenet_deploy.prototxt", folder)
    shutil.copy(shared_data / "models/lenet/lenet_iter_10000.caffemodel", folder)
    from datakit.idx import read_mnist
    images, labels = read_mnist(shared_data / "mnist/t10k-images-idx3-ubyte.gz",
                                shared_data / "mnist/t10k-labels-idx1-ubyte.gz")
    assert labels[0] == 7
    return folder, cv2.imencode(".png", images[0])[1].tobytes()


async def test_the_board_classifies_a_digit_with_lenet_trained_preprocessing(lenet_model, tmp_path, aiohttp_client):
    from trainer.board.server import make_app
    folder, seven = lenet_model
    client = await aiohttp_client(make_app(tmp_path))

    async def top() -> dict:
        r = await client.post("/api/classify", params={"path": "models/lenet"}, data=seven,
                              headers={"Content-Type": "image/png"})
        assert r.status == 200, await r.text()
        return (await r.json())["top"][0]

    info = await (await client.get("/api/model", params={"path": "models/lenet"})).json()
    assert info["train_net"] is None
    assert (await top())["prob"] < 0.9        # classify.py's defaults: 0..255 pixels and mirrored digits
    shutil.copy(ROOT / "models/lenet/lenet_train_test.prototxt", folder)
    info = await (await client.get("/api/model", params={"path": "models/lenet"})).json()
    assert info["train_net"] == "models/lenet/lenet_train_test.prototxt"
    best = await top()
    assert best["class"] == 7 and best["prob"] > 0.99


def test_with_crop_size_images_are_resized_to_the_training_images_size_first(cli, tmp_path):
    """Caffe's TEST phase cut its crops from the database's images (8x8 here), not from the image
    squeezed to the crop: the size is read from the source's first record."""
    from tests.test_fit import make_db
    deploy = DEPLOY.replace("dim: 8 dim: 8", "dim: 6 dim: 6")
    save_weights(Net(text_format.Parse(deploy, caffe_pb2.NetParameter()), caffe_pb2.TEST), tmp_path / "w.caffemodel")
    (tmp_path / "deploy.prototxt").write_text(deploy)
    cv2.imwrite(str(tmp_path / "x.png"), np.random.default_rng(4).integers(0, 256, (13, 17, 3), dtype=np.uint8))
    nets = tmp_path / "nets"
    nets.mkdir()
    _train_net(nets, "crop_size: 6 scale: 0.01")
    base = ["trainer", "classify", "x.png", "--model", "deploy.prototxt", "--weights", "w.caffemodel",
            "--device", "cpu", "--top-k", "3"]
    unknown = cli(*base, "--train-net", "nets/train_val.prototxt", cwd=tmp_path)
    assert unknown.returncode == 0, unknown.stderr
    assert "its source test_lmdb was not found to read the size from; --image-dims sets it" in unknown.stderr
    make_db(nets / "test_lmdb", 4, 1, size=8)   # beside the net
    taken = cli(*base, "--train-net", "nets/train_val.prototxt", cwd=tmp_path)
    by_hand = cli(*base, "--image-dims", "8,8", "--center-only", "--input-scale", "0.01", cwd=tmp_path)
    assert taken.returncode == by_hand.returncode == 0, taken.stderr
    assert f"images resized to 8x8 (the size in {Path('nets') / 'test_lmdb'}) first" in taken.stderr
    assert taken.stdout == by_hand.stdout != unknown.stdout
    mine = cli(*base, "--train-net", "nets/train_val.prototxt", "--image-dims", "6,6", cwd=tmp_path)
    assert mine.stdout == unknown.stdout     # --image-dims wins
