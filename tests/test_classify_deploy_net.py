"""`trainer classify` with a train/val net (its images come from Data layers): one line asking for the deploy net."""

from __future__ import annotations

import cv2
import numpy as np
from google.protobuf import text_format

from datakit.formats import caffe_pb2
from tests.test_fit import make_db
from trainer.net import Net
from trainer.weights import save_weights

TRAIN_VAL = '''
name: "tv"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  data_param { source: "train_lmdb" batch_size: 4 backend: LMDB } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
  data_param { source: "test_lmdb" batch_size: 4 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


def test_classify_with_a_train_val_net_asks_for_the_deploy_net(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_db(tmp_path / "train_lmdb", 8, 0)
    make_db(tmp_path / "test_lmdb", 8, 1)
    (tmp_path / "train_val.prototxt").write_text(TRAIN_VAL)
    save_weights(Net(text_format.Parse(TRAIN_VAL, caffe_pb2.NetParameter()), caffe_pb2.TEST),
                 tmp_path / "w.caffemodel")
    cv2.imwrite(str(tmp_path / "x.png"), np.full((8, 8, 3), 50, np.uint8))
    res = cli("trainer", "classify", "x.png", "--model", "train_val.prototxt", "--weights", "w.caffemodel",
              "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "train_val.prototxt" in lines[0] and "deploy net" in lines[0] and "Input layer" in lines[0]
    assert "Data layer 'mnist'" in lines[0]
