"""Messages that lead somewhere (trainer and CLI side): where a file came from, what it is, next steps."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from datakit.formats import caffe_pb2
from datakit.formats.caffemodel import write_caffemodel
from tests.conftest import ROOT
from trainer.net import Net
from trainer.weights import save_weights

NET = '''
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "out" inner_product_param { num_output: 2 } }
'''


def test_missing_net_file_names_the_solver_field_and_where_it_looked(cli, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models/solver.prototxt").write_text('net: "train_val.prototxt"\nbase_lr: 0.01\nmax_iter: 10\n')
    res = cli("trainer", "fit", "--solver", "models/solver.prototxt", "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 1
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("trainer: error: models/solver.prototxt: the net file 'train_val.prototxt' named by "
                           "the solver's net: field was not found: looked in the current directory "
                           f"({tmp_path}/train_val.prototxt) and beside the solver (models/train_val.prototxt)")
    (tmp_path / "models/solver2.prototxt").write_text('train_net: "t.prototxt"\nbase_lr: 0.01\nmax_iter: 10\n')
    res = cli("trainer", "fit", "--solver", "models/solver2.prototxt", "--device", "cpu", cwd=tmp_path)
    assert "named by the solver's train_net: field" in res.stderr


def test_weights_given_a_text_prototxt_says_so(cli, tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    res = cli("trainer", "time", "--model", "net.prototxt", "--weights", "net.prototxt", "--iterations", "1",
              "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 1
    [line] = res.stderr.strip().splitlines()
    assert line == ("trainer: error: net.prototxt: is a text prototxt (a net or solver description), not a "
                    ".caffemodel of weights; give the binary .caffemodel (or .caffemodel.h5) a training run wrote")
    (tmp_path / "commented.txt").write_text("# a comment first\n" + NET)
    os.rename(tmp_path / "commented.txt", tmp_path / "commented.caffemodel")
    res = cli("datakit", "describe", "commented.caffemodel", cwd=tmp_path)
    assert res.returncode == 1 and "is a text prototxt" in res.stderr


def test_classify_refuses_a_mean_whose_channels_do_not_match_the_net(cli, tmp_path):
    cv2.imwrite(str(tmp_path / "x.png"), np.full((4, 4, 3), 50, np.uint8))
    (tmp_path / "net.prototxt").write_text(NET)
    save_weights(Net(text_format.Parse(NET, caffe_pb2.NetParameter()), caffe_pb2.TEST), tmp_path / "w.caffemodel")
    np.save(tmp_path / "gray_mean.npy", np.full((1, 4, 4), 33.0, np.float32))   # an MNIST-like 1-channel mean
    np.save(tmp_path / "bgr_mean.npy", np.full((3, 4, 4), 33.0, np.float32))
    args = ["x.png", "--model", "net.prototxt", "--weights", "w.caffemodel", "--device", "cpu"]
    res = cli("trainer", "classify", *args, "--mean", "gray_mean.npy", cwd=tmp_path)
    assert res.returncode == 1
    [line] = res.stderr.strip().splitlines()
    assert line == ("trainer: error: gray_mean.npy: the mean has 1 channel(s) (1x4x4), the net's input 'data' "
                    "takes 3; use the mean made from this net's training data")
    ok = cli("trainer", "classify", *args, "--mean", "bgr_mean.npy", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    one = cli("trainer", "classify", *args, "--mean-value", "128", cwd=tmp_path)  # one value for every channel
    assert one.returncode == 0, one.stderr


def _big_caffemodel(path: Path, layers: int = 6000) -> None:
    net = caffe_pb2.NetParameter(name="wide")
    for i in range(layers):
        layer = net.layer.add(name=f"layer_{i:05d}", type="ReLU", bottom=["data"], top=["data"])
        layer.blobs.add().data.extend([0.0])
    write_caffemodel(path, net)


@pytest.mark.parametrize("read_lines", [1, 0])
def test_output_piped_into_a_reader_that_closes_early_ends_quietly(tmp_path, read_lines):
    """`datakit describe big.caffemodel | head -1`: no Broken pipe traceback, exit 0 or 141."""
    _big_caffemodel(tmp_path / "big.caffemodel")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "cli.datakit_main", "describe", str(tmp_path / "big.caffemodel")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    for _ in range(read_lines):
        assert proc.stdout.readline().startswith(b"net wide: 6000 layers")
    proc.stdout.close()   # as `head` does once it has its lines
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert proc.returncode in (0, 141), err
    assert "Traceback" not in err and "Broken pipe" not in err and "BrokenPipeError" not in err, err
    assert err == ""


_COMMAND = re.compile(r"\b(datakit|trainer) ([a-z][a-z-]*)((?:[^`;()]*))")


def _mentions() -> list[tuple[str, str, str, list[str]]]:
    """(file, tool, command, --flags) for every command named in a shipped prototxt comment or recipe."""
    found = []
    for path in sorted((ROOT / "models").rglob("*.prototxt")) + sorted((ROOT / "manifests").glob("*.json")):
        for line in path.read_text(encoding="utf-8").splitlines():
            text = line.split("#", 1)[1] if path.suffix == ".prototxt" and "#" in line else (
                line if path.suffix == ".json" else "")
            for m in _COMMAND.finditer(text):
                found.append((path.name, m.group(1), m.group(2), re.findall(r"(--[a-z][a-z-]*)", m.group(3))))
    return found


def test_shipped_comments_name_only_commands_and_options_that_exist():
    import argparse

    from cli.datakit_main import COMMANDS as DATAKIT
    from cli.dispatch import build_parser
    from cli.trainer_main import COMMANDS as TRAINER
    parsers = {"datakit": build_parser("datakit", "", DATAKIT), "trainer": build_parser("trainer", "", TRAINER)}
    mentions = _mentions()
    assert len(mentions) > 10
    for name, tool, command, flags in mentions:
        sub = next(a for a in parsers[tool]._actions if isinstance(a, argparse._SubParsersAction))
        assert command in sub.choices, f"{name}: `{tool} {command}` is not a {tool} command"
        known = {opt for action in sub.choices[command]._actions for opt in action.option_strings}
        for flag in flags:
            assert flag in known, f"{name}: `{tool} {command}` has no option {flag}"
    for path in list((ROOT / "models").rglob("*.prototxt")):
        comments = "\n".join(line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line)
        assert not re.search(r"\bdatakit\.[a-z_]+\.[a-z_]+", comments), f"{path.name}: names a Python function as a step"



DATA_NET = '''name: "d"
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { MEAN }
  data_param { source: "train_lmdb" batch_size: 2 backend: LMDB } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "out" inner_product_param { num_output: 2 } }
'''


IMAGE_DATA = 'layer { name: "data" type: "ImageData" top: "data" top: "label" image_data_param { source: "train.txt" batch_size: 2 } }'
HDF5_DATA = 'layer { name: "data" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "train_h5.txt" batch_size: 2 } }'
DATA_LAYER = DATA_NET.split("\nlayer { name: \"fc\"")[0]


@pytest.mark.parametrize("data, missing, type_name", [
    (DATA_LAYER.replace("MEAN", ""), "train_lmdb: database not found", "Data"),
    (DATA_LAYER.replace("MEAN", 'mean_file: "mean.binaryproto"'), "mean.binaryproto: file not found", "Data"),
    # these two said only "train.txt: list file not found" / "cannot read ... source: not a file"
    ('name: "d"\n' + IMAGE_DATA, "train.txt: list file not found", "ImageData"),
    ('name: "d"\n' + HDF5_DATA, "train_h5.txt: HDF5 list file not found", "HDF5Data")])
def test_a_data_layers_missing_file_names_the_net_line_layer_and_folder(cli, tmp_path, data, missing, type_name):
    """Run from the wrong folder, `trainer fit` said only 'train_lmdb: database not found'."""
    models = tmp_path / "models"
    models.mkdir()
    fc = 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "out" inner_product_param { num_output: 2 } }\n'
    (models / "net.prototxt").write_text(data + "\n" + fc)
    (models / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.01\nmax_iter: 1\n')
    res = cli("trainer", "fit", "--solver", "models/solver.prototxt", "--device", "cpu", "--quiet", cwd=tmp_path)
    assert res.returncode == 1
    [line] = res.stderr.strip().splitlines()
    assert line == (f"trainer: error: models/net.prototxt:2: layer data ({type_name}): {missing} "
                    f"(relative paths in a net are read from the current directory, {tmp_path})")
