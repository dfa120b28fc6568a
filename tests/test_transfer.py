"""Transferred nets: the authors' CaffeNet prototxts re-made, any net, frozen vs fine-tuned training."""

from __future__ import annotations

import io
import re

import pytest

from datakit.errors import ConfigError
from datakit.formats import caffe_pb2
from datakit.formats.caffemodel import read_caffemodel
from datakit.formats.prototxt import parse_net, read_net, to_text
from tests.test_fit import make_db
from trainer.fit import FitOptions, fit
from trainer.transfer import TransferSpec, learnable_layers, transfer_net

FOLDER = re.compile(r"^(transfer(-ft)?(\d)([AB])\d([AB])|transfernatman([AB])[AB]|nolearn)_1_(\d)$")


def authors_cases(results):
    """(folder, base folder, spec) for every transferred net the authors published."""
    for folder in sorted(p.name for p in results.iterdir()):
        m = FOLDER.match(folder)
        if not m:
            continue
        n = int(m.group(7))
        if folder.startswith("nolearn"):
            yield folder, "half0A", TransferSpec(n, frozen=True, keep_names=True)
        elif m.group(6):
            yield folder, f"halfnatman{m.group(6)}", TransferSpec(n, frozen=True)
        else:
            yield folder, f"half{m.group(3)}{m.group(4)}", TransferSpec(n, frozen=m.group(2) is None)


def without_params(net: caffe_pb2.NetParameter) -> str:
    copy = caffe_pb2.NetParameter()
    copy.CopyFrom(net)
    for layer in copy.layer:
        del layer.param[:]
    return to_text(copy)


def test_every_published_transfer_net_is_remade_exactly(shared_data):
    results = shared_data / "convnet_transfer" / "results"
    cases = list(authors_cases(results))
    assert len(cases) == (12 + 6 + 2 + 1) * 7  # frozen, fine-tuned (random splits), natman, nolearn
    for folder, base_folder, spec in cases:
        base = read_net(results / base_folder / "imagenet_train.prototxt")
        theirs = read_net(results / folder / "imagenet_train.prototxt")
        mine = transfer_net(base, spec)
        # Names, tops, multipliers and decays, fillers: the whole net, field for field.
        assert to_text(mine) == to_text(theirs), folder
        # Their test nets carry no multipliers at all (a TEST net never updates); all else is equal.
        base_val = read_net(results / base_folder / "imagenet_val.prototxt")
        assert without_params(transfer_net(base_val, spec)) == without_params(
            read_net(results / folder / "imagenet_val.prototxt")), folder


def test_frozen_and_new_layers_in_the_authors_n3_net(shared_data):
    base = read_net(shared_data / "caffe_logs" / "half0A" / "imagenet_train.prototxt")
    assert [l.name for l in learnable_layers(base)] == [
        "conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    net = transfer_net(base, TransferSpec(3, frozen=True))
    by_name = {l.name: l for l in net.layer}
    assert [(p.lr_mult, p.decay_mult) for p in by_name["conv2"].param] == [(0, 0), (0, 0)]
    assert [(p.lr_mult, p.decay_mult) for p in by_name["conv4-new"].param] == [(1, 1), (2, 0)]
    assert list(by_name["relu4"].top) == ["conv4-new"] and list(by_name["pool5"].bottom) == ["conv5-new"]
    tuned = transfer_net(base, TransferSpec(3, frozen=False))
    assert [(p.lr_mult, p.decay_mult) for p in {l.name: l for l in tuned.layer}["conv2"].param] == [(1, 1), (2, 0)]


TRAIN_VAL = """
name: "small"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mean_value: 128 } data_param { source: "base_train" batch_size: 4 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { mean_value: 128 } data_param { source: "base_test" batch_size: 4 } }
layer { name: "a" type: "Convolution" bottom: "data" top: "a"
  convolution_param { num_output: 2 kernel_size: 3 bias_term: false } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" inner_product_param { num_output: 5 } }
layer { name: "acc" type: "Accuracy" bottom: "b" bottom: "label" top: "acc" include { phase: TEST } }
"""


def test_any_net_retargets_sources_by_phase_and_sets_the_class_count():
    base = parse_net(TRAIN_VAL)
    spec = TransferSpec(1, frozen=True, train_source="t/A_train", test_source="t/A_valid",
                        mean_file="t/mean.binaryproto", num_output=3)
    net = transfer_net(base, spec)
    assert [l.data_param.source for l in net.layer[:2]] == ["t/A_train", "t/A_valid"]
    assert net.layer[0].transform_param.mean_file == "t/mean.binaryproto"
    assert list(net.layer[0].transform_param.mean_value) == []
    a, b, acc = net.layer[2:]
    assert [(p.lr_mult, p.decay_mult) for p in a.param] == [(0, 0)]  # no bias: one blob
    assert (b.name, list(b.top), b.inner_product_param.num_output) == ("b-new", ["b-new"], 3)
    assert list(acc.bottom) == ["b-new", "label"]
    assert base.layer[3].name == "b"  # the base is untouched
    with pytest.raises(ConfigError, match=r"--layers 3: the net small has 2 learnable layers \(a, b\)"):
        transfer_net(base, TransferSpec(3, frozen=True))
    with pytest.raises(ConfigError, match="top layer b is copied"):
        transfer_net(base, TransferSpec(2, frozen=True, num_output=3))


def test_cli_writes_a_net_that_reads_back(cli, tmp_path):
    (tmp_path / "base.prototxt").write_text(TRAIN_VAL)
    done = cli("trainer", "transfer", str(tmp_path / "base.prototxt"), "--layers", "1", "--fine-tune",
               "-o", str(tmp_path / "out.prototxt"), "--num-output", "3")
    assert done.returncode == 0, done.stderr
    assert "a fine-tuned; b-new fresh" in done.stdout
    net = read_net(tmp_path / "out.prototxt")
    assert [l.name for l in learnable_layers(net)] == ["a", "b-new"] and not net.layer[2].param
    bad = cli("trainer", "transfer", str(tmp_path / "base.prototxt"), "--layers", "9", "--frozen",
              "-o", str(tmp_path / "bad.prototxt"))
    assert bad.returncode != 0 and "--layers 9" in bad.stderr and not (tmp_path / "bad.prototxt").exists()


NET = """
name: "three"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.0078125 mean_value: 128 } data_param { source: "train_lmdb" batch_size: 8 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
SOLVER = """net: "{net}" base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"
display: 5 max_iter: 12 snapshot_prefix: "{prefix}" random_seed: 3
"""


def _train(tmp_path, name: str, net_text: str, weights: str | None = None) -> caffe_pb2.NetParameter:
    (tmp_path / f"{name}.net").write_text(net_text)
    (tmp_path / f"{name}.solver").write_text(SOLVER.format(net=f"{name}.net", prefix=f"{name}/s"))
    fit(FitOptions(solver=f"{name}.solver", device="cpu", stream=io.StringIO(), handle_signals=False,
                   weights=weights))
    return read_caffemodel(tmp_path / f"{name}/s_iter_12.caffemodel")


def test_frozen_copied_layers_stay_bit_identical_while_fine_tuned_ones_change(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_db(tmp_path / "train_lmdb", 48, 0, size=6)
    base_model = _train(tmp_path, "base", NET)
    blobs = lambda m: {l.name: [bytes(b.SerializeToString()) for b in l.blobs] for l in m.layer if l.blobs}  # noqa: E731
    before = blobs(base_model)
    base = parse_net(NET)
    frozen = blobs(_train(tmp_path, "frozen", to_text(transfer_net(base, TransferSpec(2, frozen=True))),
                          weights="base/s_iter_12.caffemodel"))
    tuned = blobs(_train(tmp_path, "tuned", to_text(transfer_net(base, TransferSpec(2, frozen=False))),
                         weights="base/s_iter_12.caffemodel"))
    assert set(frozen) == set(tuned) == {"conv1", "conv2", "fc-new"}
    for name in ("conv1", "conv2"):
        assert frozen[name] == before[name]           # every byte of weights and biases
        assert all(t != b for t, b in zip(tuned[name], before[name]))
    assert frozen["fc-new"] != before["fc"] and tuned["fc-new"] != before["fc"]


def test_a_source_option_no_data_layer_takes_is_refused(cli, tmp_path, shared_data):
    """--train-source on the authors' 2014 train net (no phase rules) was dropped, and --source on a
    train/val net set its TEST layer too: either way a net read data the user did not ask for."""
    from trainer.transfer import check_sources

    old = read_net(shared_data / "caffe_logs" / "half0A" / "imagenet_train.prototxt")
    with pytest.raises(ConfigError, match=r"--train-source: the net CaffeNet has no TRAIN-phase data layer .* "
                                          r"\(its data layers: no phase rule\); give --source"):
        check_sources(old, TransferSpec(3, frozen=True, train_source="B_train"))
    check_sources(old, TransferSpec(3, frozen=True, source="B_train"))
    assert transfer_net(old, TransferSpec(3, frozen=True, source="B_train")).layer[0].data_param.source == "B_train"
    (tmp_path / "base.prototxt").write_text(TRAIN_VAL)
    done = cli("trainer", "transfer", str(tmp_path / "base.prototxt"), "--layers", "1", "--frozen",
               "-o", str(tmp_path / "out.prototxt"), "--source", "B_train")
    assert done.returncode == 1 and not (tmp_path / "out.prototxt").exists()
    assert done.stderr == ("trainer: error: --source: the net small has no data layer without a phase rule for it "
                           "to set (its data layers: TRAIN, TEST); give --train-source / --test-source\n")
    # The library call alone keeps each phase's source: --source is for layers without a phase rule.
    net = transfer_net(parse_net(TRAIN_VAL), TransferSpec(1, frozen=True, source="B_train", train_source="t"))
    assert [l.data_param.source for l in net.layer[:2]] == ["t", "base_test"]
