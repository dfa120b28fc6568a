"""`trainer draw`: every layer of the shipped nets is in the drawing; in-place layers are folded."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from datakit.formats import caffe_pb2
from datakit.formats.prototxt import parse_net, read_net
from trainer.draw import blob_edges, net_drawing, net_graph
from trainer.net import filter_net

ROOT = Path(__file__).resolve().parents[1]
NETS = ["models/caffenet/train_val.prototxt", "models/caffenet/deploy.prototxt",
        "models/lenet/lenet_train_test.prototxt", "models/finetune_flickr_style/train_val.prototxt",
        "models/finetune_flickr_style/deploy.prototxt"]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot program is not installed (apt-get install graphviz; "
                                      "make test installs it when run as root)")


def _layer_names(net: caffe_pb2.NetParameter, phase: int | None) -> list[str]:
    layers = net.layer if phase is None else filter_net(net, caffe_pb2.NetState(phase=phase))
    return [lp.name for lp in layers]


@pytest.mark.parametrize("path", NETS)
@pytest.mark.parametrize("phase", [None, caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_drawing_has_every_layer_of_the_phase(path, phase):
    net = read_net(ROOT / path)
    drawing = net_drawing(net, phase)
    assert sorted(drawing.layer_names) == sorted(_layer_names(net, phase))
    # every edge joins a drawn box and a drawn blob
    boxes = {b.node for b in drawing.boxes}
    for src, dst in drawing.edges:
        assert (src in boxes and dst in drawing.blobs) or (src in drawing.blobs and dst in boxes)


def test_in_place_layers_fold_into_the_layer_that_wrote_their_blob():
    net = read_net(ROOT / "models/caffenet/train_val.prototxt")
    drawing = net_drawing(net, caffe_pb2.TRAIN)
    by_name = {b.layer.name: b for b in drawing.boxes}
    assert [f.name for f in by_name["fc6"].folded] == ["relu6", "drop6"]
    assert "relu1" not in by_name and "+ relu1 (ReLU)" in by_name["conv1"].label_lines()
    assert "stride 4, pad 0" in by_name["conv1"].label_lines()
    assert "MAX 3" in by_name["pool1"].label_lines()
    assert "1000 outputs" in by_name["fc8"].label_lines()
    # no loops: each blob node is written at most once in one phase
    writes = [dst for src, dst in drawing.edges if dst in drawing.blobs]
    assert len(writes) == len(set(writes))
    # all phases: both data layers write the one data blob conv1 reads
    everything = net_drawing(net)
    [data] = [b for b, n in everything.blobs.items() if n == "data"]
    box_of = {b.node: b for b in everything.boxes}
    writers = [box_of[src] for src, dst in everything.edges if dst == data]
    assert [(w.layer.name, w.layer.include[0].phase) for w in writers] == [("data", caffe_pb2.TRAIN), ("data", caffe_pb2.TEST)]


def test_in_place_layers_fold_into_a_net_input_and_stand_alone_on_a_blob_nobody_wrote():
    body = ('layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }')
    drawing = net_drawing(parse_net('input: "x" input_shape { dim: 1 dim: 3 }\n' + body))
    assert drawing.layer_names == ["input", "r", "ip"]
    assert [b.layer.name for b in drawing.boxes] == ["input", "ip"]
    drawing = net_drawing(parse_net(body))  # x comes from no layer (e.g. filtered out by phase)
    assert [b.layer.name for b in drawing.boxes] == ["r", "ip"]
    assert len(drawing.blobs) == 3  # x before r, x after r, y


@pytest.mark.parametrize("path", NETS)
def test_dot_source_names_every_layer_without_graphviz(tmp_path, cli, path):
    out = tmp_path / "net.dot"
    res = cli("trainer", "draw", str(ROOT / path), "-o", str(out))
    assert res.returncode == 0, res.stderr
    source = out.read_text()
    assert source.startswith("digraph")
    for name in _layer_names(read_net(ROOT / path), None):
        assert re.search(rf'label="{re.escape(name)} \(|\\n\+ {re.escape(name)} \(', source), name


def _svg_texts(svg: bytes) -> str:
    root = ET.fromstring(svg)
    return "\n".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))


@needs_dot
@pytest.mark.parametrize("path", NETS)
def test_svg_has_a_box_for_every_layer(tmp_path, cli, path):
    out = tmp_path / "net.svg"
    res = cli("trainer", "draw", str(ROOT / path), "-o", str(out), "--rankdir", "TB", "--phase", "TEST")
    assert res.returncode == 0, res.stderr
    texts = _svg_texts(out.read_bytes())
    names = _layer_names(read_net(ROOT / path), caffe_pb2.TEST)
    for name in names:
        assert re.search(rf"(^|\+ ){re.escape(name)} \(", texts, re.M), f"{name} not drawn"
    assert f"{len(names)} layers" in res.stdout


@needs_dot
def test_png_is_a_png(tmp_path, cli):
    out = tmp_path / "lenet.png"
    res = cli("trainer", "draw", str(ROOT / "models/lenet/lenet_train_test.prototxt"), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_format_and_missing_net_are_one_line_errors(tmp_path, cli):
    res = cli("trainer", "draw", str(ROOT / "models/lenet/lenet_train_test.prototxt"), "-o", str(tmp_path / "x.txt"))
    assert res.returncode != 0 and "unknown output format .txt" in res.stderr
    assert not (tmp_path / "x.txt").exists()
    res = cli("trainer", "draw", str(tmp_path / "none.prototxt"), "-o", str(tmp_path / "x.svg"))
    assert res.returncode != 0 and "none.prototxt: net prototxt not found" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_names_with_quotes_and_backslashes_stay_one_dot_string():
    net = parse_net('layer { name: "a\\"b\\\\n" type: "Input" top: "x" input_param { shape { dim: 1 } } }')
    source = net_graph(net).source
    assert 'label="a\\"b\\\\n (Input)' in source


def test_blobs_as_edges_keep_only_net_inputs_and_outputs_as_nodes():
    net = read_net(ROOT / "models/caffenet/train_val.prototxt")
    drawing = net_drawing(net, caffe_pb2.TRAIN)
    edges, nodes = blob_edges(drawing)
    assert sorted(nodes.values()) == ["loss"]
    name = {b.node: b.layer.name for b in drawing.boxes} | nodes
    named = {(name[s], name[t], blob) for s, t, blob in edges}
    assert {("data", "loss", "label"), ("data", "conv1", "data"), ("conv1", "pool1", "conv1"),
            ("fc8", "loss", "fc8"), ("loss", "loss", "")} <= named
    # a blob read by nobody and written by nobody would be lost as an edge: it stays a node
    test_drawing = net_drawing(net, caffe_pb2.TEST)
    assert sorted(blob_edges(test_drawing)[1].values()) == ["accuracy", "loss"]


def test_blobs_as_nodes_is_draw_nets_look(tmp_path, cli):
    for mode, octagons in [("nodes", 17), ("edges", 2)]:   # CaffeNet, every phase: 17 blobs; loss, accuracy
        out = tmp_path / f"{mode}.dot"
        res = cli("trainer", "draw", str(ROOT / "models/caffenet/train_val.prototxt"), "-o", str(out), "--blobs", mode)
        assert res.returncode == 0, res.stderr
        assert out.read_text().count("shape=octagon") == octagons, mode
