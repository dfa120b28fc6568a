"""Safety rails: which classifier a label feeds, non-finite outputs, long label runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from google.protobuf import text_format

from datakit.formats import caffe_pb2
from trainer.net import Net
from trainer.rails import (DivergedError, LabelError, check_loss, first_non_finite_layer, label_limits,
                           longest_label_run, make_label_check, near_flt_min_loss)

NET = """
name: "r"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 4 channels: 2 height: 1 width: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 } }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" }
"""


def _net():
    return Net(text_format.Parse(NET, caffe_pb2.NetParameter()), caffe_pb2.TRAIN, seed=0)


def test_label_limits_follow_splits_and_in_place_layers():
    limits = label_limits(_net())
    found = {(l.consumer, l.classifier, l.classes, l.ignore_label) for l in limits["data"]}
    assert found == {("loss", "fc", 3, 255), ("acc", "fc", 3, None)}


def test_label_check_message_and_ignore_label():
    net = _net()
    data = net.layer("data")
    loss_only = [l for l in label_limits(net)["data"] if l.consumer == "loss"]
    check = make_label_check(data, loss_only)
    check(np.array([0, 2, 255, 1]), ["a", "b", "c", "d"])  # 255 is ignore_label: fine
    with pytest.raises(LabelError, match=r"record 'k3' has label 3 but layer fc \(InnerProduct\) feeding loss "
                                         r"has num_output 3 \(labels must be 0\.\.2\)"):
        check(np.array([0, 1, 2, 3]), ["k0", "k1", "k2", "k3"])
    with pytest.raises(LabelError, match="label -1"):
        check(np.array([-1, 0, 0, 0]), ["k0", "k1", "k2", "k3"])


def test_first_non_finite_layer_and_loss_message():
    net = _net()
    net.layer("data").reset(np.ones((4, 2, 1, 1), np.float32), np.zeros(4))
    net.forward()
    assert first_non_finite_layer(net) is None
    net.layer("fc").blobs[0].data[...] = np.inf
    with np.errstate(all="ignore"):
        loss = net.forward()
    assert not math.isfinite(loss)
    assert first_non_finite_layer(net)[:2] == ("fc", "InnerProduct")
    with pytest.raises(DivergedError, match=r"iteration 7: loss is .*layer fc \(InnerProduct\) is the first.*"
                                            r"lower base_lr \(now 0\.1\).*87\.3365"):
        check_loss(net, loss, 7, 0.1)
    check_loss(net, 1.5, 7, 0.1)  # finite: no error
    assert near_flt_min_loss(87.33654) and not near_flt_min_loss(2.3)


def test_longest_label_run():
    assert longest_label_run([]) == (0, -1, 0)
    assert longest_label_run([3, 3, 3]) == (3, 3, 0)
    assert longest_label_run([0, 1, 1, 0, 0, 0, 0, 2]) == (4, 0, 3)


def test_loss_stuck_at_flt_min_stops_after_a_few_iterations():
    from trainer.rails import FLT_MIN_PATIENCE, check_flt_min_streak
    check_flt_min_streak(FLT_MIN_PATIENCE - 1, 5, 0.01)
    with pytest.raises(DivergedError, match=r"87\.3365 \(= -log\(FLT_MIN\)\) for 3 iterations.*Lower base_lr"):
        check_flt_min_streak(FLT_MIN_PATIENCE, 5, 0.01)
