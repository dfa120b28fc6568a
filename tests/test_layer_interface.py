"""The Layer base class declares its hooks, and the registry refuses a type registered twice."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from datakit.formats import caffe_pb2
from trainer.layers import Layer, layer_class, register, registered_types
from trainer.layers.base_data import PrefetchingDataLayer
from trainer.net import Net
from trainer.rails import label_limits


def test_register_refuses_a_second_class_for_a_type_and_keeps_the_first():
    relu = layer_class("ReLU")
    with pytest.raises(ValueError, match=r"layer type 'ReLU' is already registered by "
                                         r"trainer\.layers\.activation\.ReLULayer; .*MyReLU cannot register"):
        @register("ReLU")
        class MyReLU(Layer):
            pass
    assert layer_class("ReLU") is relu


def test_register_accepts_the_same_definition_again():
    # What importlib.reload of a family module does: one class, defined twice.
    before = registered_types()
    cls = layer_class("Sigmoid")
    assert register("Sigmoid")(cls) is cls
    assert registered_types() == before


def test_set_up_is_counts_then_setup_then_reshape_and_cannot_be_overridden():
    calls = []

    class Probe(Layer):
        min_bottoms = max_bottoms = 1

        def setup(self, bottoms, tops):
            calls.append("setup")

        def reshape(self, bottoms, tops):
            calls.append("reshape")

    layer = Probe(caffe_pb2.LayerParameter(name="p"), caffe_pb2.TEST, np)
    with pytest.raises(Exception, match=r"layer p .*takes 1 bottom blob\(s\), got 0"):
        layer.set_up([], [])
    assert calls == []
    layer.set_up([layer.new_blob((2,))], [])
    assert calls == ["setup", "reshape"]

    with pytest.raises(TypeError, match="overrides Layer.set_up"):
        class Bad(Layer):
            def set_up(self, bottoms, tops):
                pass


def test_hooks_have_declared_defaults():
    layer = Layer(caffe_pb2.LayerParameter(name="x"), caffe_pb2.TEST, np)
    assert layer.get_state() == {}
    layer.set_state({})
    assert layer.fixed_params is False and layer.label_bottom is None and layer.source_name == ""
    layer.close()
    assert layer_class("SoftmaxWithLoss").label_bottom == 1 and layer_class("Accuracy").label_bottom == 1
    assert layer_class("BatchNorm").fixed_params is True
    assert issubclass(layer_class("Data"), PrefetchingDataLayer)


NET = """
name: "n"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 3 height: 1 width: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "probe" type: "%s" bottom: "fc" bottom: "label" top: "out" }
"""


class _TakesLabels(Layer):
    """A new loss-like layer: its second bottom holds class labels, declared by an attribute."""

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1
    label_bottom = 1

    def reshape(self, bottoms, tops):
        tops[0].reshape(())

    def forward(self, bottoms, tops):
        tops[0].data = self.xp.zeros((), self.dtype)


def test_a_layer_that_declares_label_bottom_gets_its_labels_checked():
    name = "TestOnlyTakesLabels"
    if name not in registered_types():
        register(name)(_TakesLabels)
    net = Net(text_format.Parse(NET % name, caffe_pb2.NetParameter()), caffe_pb2.TRAIN, seed=0)
    [limit] = label_limits(net)["data"]
    assert (limit.consumer, limit.classifier, limit.classes) == ("probe", "fc", 4)
    # the same net with a layer that does not declare it: nothing to check
    net = Net(text_format.Parse((NET % "EuclideanLoss").replace("num_output: 4", "num_output: 1"),
                                caffe_pb2.NetParameter()), caffe_pb2.TRAIN, seed=0)
    assert label_limits(net) == {}


def test_stateless_layers_put_nothing_in_a_snapshot(tmp_path):
    from trainer.snapshot import read_solverstate
    from trainer.solver import Solver
    net = Net(text_format.Parse(NET % "SoftmaxWithLoss", caffe_pb2.NetParameter()), caffe_pb2.TRAIN, seed=0)
    solver = Solver(caffe_pb2.SolverParameter(base_lr=0.1, max_iter=1), net,
                    snapshot_prefix=str(tmp_path / "s"))
    data = read_solverstate(solver.snapshot().solverstate).extra["train"]["data"]
    assert list(data) == ["data"] and set(data["data"]) == {"consumed", "seed"}


def test_data_layers_name_their_source_in_label_errors(tmp_path):
    import cv2

    from tests.test_data_layers import build, data_text, make_lmdb
    from trainer.rails import LabelError, LabelLimit, make_label_check
    db = tmp_path / "db"
    make_lmdb(db, n=4, labels=[0, 1, 7, 1])
    layer, tops = build(data_text(db, 4))
    try:
        assert layer.source_name == str(db)
        layer.label_check = make_label_check(layer, [LabelLimit(3, "fc", "InnerProduct", "loss", None)])
        with pytest.raises(LabelError, match=rf"^{db}: record '00000002_img2.jpg' has label 7 "):
            layer.forward([], tops)
    finally:
        layer.close()
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "list.txt").write_text("a.png 0\n")
    image, _ = build('name: "i" type: "ImageData" top: "data" top: "label" '
                     'image_data_param { source: "list.txt" batch_size: 1 }', base_dir=tmp_path)
    memory, _ = build('name: "m" type: "MemoryData" top: "data" top: "label" '
                      'memory_data_param { batch_size: 1 channels: 1 height: 1 width: 1 }')
    try:
        assert image.source_name == str(tmp_path / "list.txt") and memory.source_name == ""
    finally:
        image.close()
        memory.close()
