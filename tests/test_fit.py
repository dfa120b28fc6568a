"""`trainer fit` end to end on tiny nets: loss falls, exact resume, frozen layers, rails, signals."""

from __future__ import annotations

import io
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from datakit.formats.datum import encode_datum
from datakit.db.lmdb_backend import LmdbWriter
from datakit.formats.caffemodel import read_caffemodel
from trainer.curves import parse_log
from trainer.fit import FitOptions, fit
from trainer.rails import DivergedError, LabelError
from trainer.snapshot import read_solverstate

NET = """
name: "tiny"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ crop_size: 6 mirror: true scale: 0.0078125 mean_value: 128 }}
  data_param {{ source: "{train}" batch_size: 8 backend: LMDB }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ crop_size: 6 scale: 0.0078125 mean_value: 128 }}
  data_param {{ source: "{test}" batch_size: 10 backend: LMDB }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param {{ lr_mult: {conv_lr} }} param {{ lr_mult: {conv_lr} }}
  convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "drop" type: "Dropout" bottom: "conv1" top: "conv1" dropout_param {{ dropout_ratio: 0.2 }} }}
layer {{ name: "{fc}" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param {{ num_output: {classes} weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" include {{ phase: TEST }} }}
"""

SOLVER = """
net: "{net}"
test_iter: 3
test_interval: {test_interval}
base_lr: {base_lr}
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 5
max_iter: {max_iter}
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
random_seed: 7
"""


def make_db(path, n, seed, classes=3, size=8, bad_label_at=None):
    """Images whose colour says their class: a net can learn it in a few dozen iterations."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        label = int(rng.integers(0, classes))
        img = rng.integers(0, 60, size=(3, size, size)).astype(np.uint8)
        img[label] += 150
        if i == bad_label_at:
            label = classes + 2
        items.append((f"{i:08d}_img{i}.png".encode(), encode_datum(img, label)))
    LmdbWriter(path).write(items)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_db(tmp_path / "train_lmdb", 64, 0)
    make_db(tmp_path / "test_lmdb", 30, 1)

    def write(name="solver.prototxt", *, conv_lr=1, fc="fc", classes=3, max_iter=40, snapshot=0,
              base_lr=0.05, test_interval=20, train="train_lmdb", prefix="snap/tiny"):
        (tmp_path / f"{name}.net").write_text(NET.format(train=train, test="test_lmdb", conv_lr=conv_lr, fc=fc,
                                                          classes=classes))
        (tmp_path / name).write_text(SOLVER.format(net=f"{name}.net", max_iter=max_iter, snapshot=snapshot,
                                                   prefix=prefix, base_lr=base_lr, test_interval=test_interval))
        return name
    return write


def opts(solver, **kw):
    return FitOptions(solver=solver, device="cpu", stream=io.StringIO(), handle_signals=False, **kw)


def test_fit_learns_logs_and_snapshots(project, tmp_path):
    result = fit(opts(project()))
    losses = [l for _, l in result.train_losses]
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])
    assert result.test_scores[0]["accuracy"] > 0.8
    final = tmp_path / "snap/tiny_iter_40.caffemodel"
    assert final.is_file() and (tmp_path / "snap/tiny_iter_40.solverstate").is_file()
    model = read_caffemodel(final)
    assert [l.name for l in model.layer if len(l.blobs)] == ["conv1", "fc"]
    state = read_solverstate(tmp_path / "snap/tiny_iter_40.solverstate")
    assert state.iter == 40 and len(state.history) == 4 and state.history[0].shape == (4, 3, 3, 3)
    text = (tmp_path / "snap/tiny.log").read_text()
    for line in ("] Iteration 0, Testing net (#0)", "    Test net output #1: accuracy = ",
                 "] Iteration 5, loss = ", "] Iteration 5, lr = ", "    Train net output #0: loss = ",
                 "Optimization Done."):
        assert line in text
    [run] = parse_log(tmp_path / "snap/tiny.log")
    assert [it for it, _ in run.test["accuracy"]] == [0, 20, 40]
    assert run.train["lr"][1] == (5, pytest.approx(0.05 * (1 + 0.0001 * 5) ** -0.75, rel=1e-5))
    assert (tmp_path / "snap/tiny.metrics.csv").read_text().count(",test,accuracy,") == 3


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_test_passes_get_a_progress_bar_on_a_terminal_only(project, monkeypatch):
    """A terminal gets a delayed, erased bar per test pass (its total the test_iter); a log file none."""
    import tqdm
    made: list[dict] = []
    real = tqdm.tqdm

    def spy(*args, **kw):
        made.append(kw)
        return real(*args, **{**kw, "delay": 0})
    monkeypatch.setattr(tqdm, "tqdm", spy)
    plain = fit(opts(project()))
    assert made == []
    term = _Terminal()
    on_tty = fit(FitOptions(solver=project(), device="cpu", stream=term, handle_signals=False, restart=True))
    assert [(kw["total"], kw["leave"], kw["delay"]) for kw in made] == [(3, False, 2)] * 3  # iterations 0, 20, 40
    assert "test net #0" in term.getvalue()
    assert on_tty.test_scores == plain.test_scores


def test_fit_progress_flags_force_or_refuse_the_test_bar(project, monkeypatch, cli, tmp_path):
    """--progress draws the test passes' bar even off a terminal; --no-progress (progress=False) none even on one."""
    import tqdm

    from tests.pty_cli import assert_one_report_format
    made: list[dict] = []
    real = tqdm.tqdm
    monkeypatch.setattr(tqdm, "tqdm", lambda *a, **kw: made.append(kw) or real(*a, **{**kw, "delay": 0}))
    fit(FitOptions(solver=project(max_iter=20), device="cpu", stream=_Terminal(), handle_signals=False,
                   progress=False))
    assert made == []
    name = project("cli.prototxt", max_iter=20, prefix="cli/run")
    forced = cli("trainer", "fit", "--solver", name, "--device", "cpu", "--progress", "--report", "r.json",
                 cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "test net #0: " in forced.stderr and "/3 [" in forced.stderr  # the bar's desc and count
    assert assert_one_report_format(tmp_path / "r.json")["iterations"] == 20
    plain = cli("trainer", "fit", "--solver", name, "--device", "cpu", "--restart", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "Testing net (#0)" in plain.stderr and "test net #0" not in plain.stderr  # the log line, no bar


def test_resume_reproduces_the_uninterrupted_losses(project, tmp_path):
    whole = fit(opts(project("a.prototxt", max_iter=30, prefix="a/run")))
    half = fit(opts(project("b.prototxt", max_iter=30, snapshot=12, prefix="b/run"), max_iter=12))
    assert [l for _, l in half.train_losses] == [l for _, l in whole.train_losses[:12]]
    rest = fit(opts("b.prototxt", snapshot="b/run_iter_12.solverstate"))
    assert rest.train_losses[0][0] == 12
    assert [l for _, l in rest.train_losses] == [l for _, l in whole.train_losses[12:]]
    a = read_caffemodel(tmp_path / "a/run_iter_30.caffemodel")
    b = read_caffemodel(tmp_path / "b/run_iter_30.caffemodel")
    blobs = lambda m: {l.name: [list(b.data) for b in l.blobs] for l in m.layer if len(l.blobs)}  # noqa: E731
    assert blobs(a) == blobs(b) and set(blobs(a)) == {"conv1", "fc"}


def test_frozen_layer_stays_bit_identical_and_finetune_renamed_layer(project, tmp_path):
    fit(opts(project("base.prototxt", max_iter=10, prefix="base/b")))
    base = read_caffemodel(tmp_path / "base/b_iter_10.caffemodel")
    log = io.StringIO()
    name = project("ft.prototxt", conv_lr=0, fc="fc_new", classes=3, max_iter=10, prefix="ft/f")
    fit(FitOptions(solver=name, device="cpu", stream=log, handle_signals=False,
                   weights="base/b_iter_10.caffemodel"))
    tuned = read_caffemodel(tmp_path / "ft/f_iter_10.caffemodel")
    conv_before = [l for l in base.layer if l.name == "conv1"][0]
    conv_after = [l for l in tuned.layer if l.name == "conv1"][0]
    assert conv_before.blobs[0].data == conv_after.blobs[0].data
    assert conv_before.blobs[1].data == conv_after.blobs[1].data
    text = log.getvalue()
    assert "copied layer conv1" in text
    assert "initialised layer fc_new" in text and "ignored layer fc" in text


def test_label_out_of_range_names_record_and_classifier(project, tmp_path):
    make_db(tmp_path / "bad_lmdb", 16, 3, bad_label_at=5)
    name = project("bad.prototxt", train="bad_lmdb")
    with pytest.raises(LabelError, match=r"record '00000005_img5.png' has label 5 but layer fc \(InnerProduct\)"
                                         r" feeding loss has num_output 3"):
        fit(opts(name))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_loss_names_first_layer_and_suggests_lower_lr(project):
    name = project("nan.prototxt", base_lr=1e30, test_interval=0)
    with pytest.raises(DivergedError, match=r"lower base_lr.*87\.3365") as err:
        fit(opts(name))
    assert "layer conv1 (Convolution) is the first" in str(err.value) or "layer fc" in str(err.value)


def test_cli_fit_and_sigterm_writes_snapshot(project, tmp_path, cli):
    name = project("cli.prototxt", max_iter=20, prefix="cli/run")
    res = cli("trainer", "fit", "--solver", name, "--device", "cpu", "--quiet", "--report", "r.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "trained to iteration 20" in res.stdout and "accuracy" in res.stdout
    import json
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["iterations"] == 20 and report["snapshots"][-1]["caffemodel"] == "cli/run_iter_20.caffemodel"
    assert 0 <= report["test_scores"][0]["accuracy"] <= 1
    long = project("long.prototxt", max_iter=100000, prefix="long/run")
    import os
    from tests.conftest import ROOT
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "cli.trainer_main", "fit", "--solver", long, "--device", "cpu"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "long/run.log"
    for _ in range(600):
        if log.exists() and "Iteration 5, loss" in log.read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "resume with --snapshot long/run_iter_" in out
    assert "] SIGTERM received: stopped after iteration " in err and "Traceback" not in err
    snaps = list((tmp_path / "long").glob("run_iter_*.solverstate"))
    assert len(snaps) == 1
    assert read_solverstate(snaps[0]).iter >= 5


def test_resume_from_a_caffe_solverstate_without_sidecar(project, tmp_path):
    fit(opts(project("c.prototxt", max_iter=10, snapshot=5, prefix="c/run"), max_iter=5))
    (tmp_path / "c/run_iter_5.solverstate.json").unlink()
    log = io.StringIO()
    rest = fit(FitOptions(solver="c.prototxt", device="cpu", stream=log, handle_signals=False,
                          snapshot="c/run_iter_5.solverstate"))
    assert rest.iterations == 10 and rest.train_losses[0][0] == 5
    assert "a Caffe solverstate: data layers start from the first record" in log.getvalue()


def test_cli_errors_are_one_line(project, tmp_path, cli):
    res = cli("trainer", "fit", "--solver", "nope.prototxt", cwd=tmp_path)
    assert res.returncode == 1 and "nope.prototxt" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    fit(opts(project("w.prototxt", max_iter=2, prefix="w/run")))
    name = project("w4.prototxt", classes=4, max_iter=2, prefix="w4/run")
    res = cli("trainer", "fit", "--solver", name, "--device", "cpu", "--weights", "w/run_iter_2.caffemodel",
              cwd=tmp_path)
    assert res.returncode == 1
    assert "layer fc" in res.stderr and "shape" in res.stderr
    (tmp_path / "adam.prototxt").write_text((tmp_path / "w.prototxt").read_text() + 'type: "Adam"\n')
    res = cli("trainer", "fit", "--solver", "adam.prototxt", "--device", "cpu", "--snapshot",
              "w/run_iter_2.solverstate", cwd=tmp_path)
    assert res.returncode == 1 and "history blobs" in res.stderr


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_too_high_learning_rate_stops_training(project):
    name = project("hot.prototxt", base_lr=200, test_interval=0, max_iter=60)
    with pytest.raises(DivergedError, match=r"(?i)lower base_lr \(now 200\)"):
        fit(opts(name))


def test_cli_nan_loss_is_one_line_without_numpy_warnings(project, tmp_path, cli):
    name = project("boom.prototxt", base_lr=1e30, test_interval=0, prefix="boom/run")
    res = cli("trainer", "fit", "--solver", name, "--device", "cpu", "--quiet", cwd=tmp_path)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("trainer: error: iteration") and "lower base_lr" in lines[0]


def test_summary_lines_and_exit_status():
    from pathlib import Path

    from trainer.fit import exit_status, summary_lines
    from trainer.snapshot import SnapshotPaths
    from trainer.solver import SolveResult
    done = SolveResult(20, test_scores=[{"accuracy": 0.91234, "loss": 0.3}])
    assert summary_lines(done) == ["trained to iteration 20; test net #0: accuracy = 0.9123, loss = 0.3"]
    assert exit_status(done) == 0
    snap = SnapshotPaths(Path("s_iter_7.caffemodel"), Path("s_iter_7.solverstate"), Path("s_iter_7.solverstate.json"))
    for reason, status in (("SIGINT", 130), ("SIGTERM", 143)):
        stopped = SolveResult(7, stopped_early=True, stop_reason=reason, snapshots=[snap])
        assert summary_lines(stopped) == ["trained to iteration 7; weights s_iter_7.caffemodel",
                                          f"stopped early ({reason}); resume with --snapshot s_iter_7.solverstate"]
        assert exit_status(stopped) == status


def test_resuming_into_a_renamed_layer_is_refused_and_points_at_weights(project, tmp_path, cli):
    """fc renamed to fc_new between snapshot and resume: same shapes and history count, so only the
    weight copy can tell; resuming would have trained fc_new from its filler with fc's momentum."""
    fit(opts(project("r.prototxt", max_iter=10, snapshot=10, prefix="r/run")))
    project("r.prototxt", max_iter=20, snapshot=10, prefix="r/run", fc="fc_new")
    res = cli("trainer", "fit", "--solver", "r.prototxt", "--snapshot", "r/run_iter_10.solverstate",
              "--device", "cpu", "--quiet", cwd=tmp_path)
    assert res.returncode != 0
    assert "r/run_iter_10.solverstate: its weights have no layer fc_new of this net" in res.stderr
    assert "--weights r/run_iter_10.caffemodel" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r/run_iter_20.caffemodel").exists()


def test_a_test_pass_longer_than_the_test_set_is_named_in_fit_and_in_trainer_test(project, tmp_path, cli):
    """test_iter x batch_size past the test database's end wraps: some records scored twice, said in one line each."""
    solver = project(max_iter=2)
    fit(o := opts(solver))  # test_iter 3 x batch 10 = 30 = the 30 test records: nothing to say
    assert "W" not in "".join(line[:1] for line in o.stream.getvalue().splitlines())
    shutil.rmtree(tmp_path / "test_lmdb")
    make_db(tmp_path / "test_lmdb", 25, 1)
    fit(o := opts(solver, restart=True))
    [warning] = [line for line in o.stream.getvalue().splitlines() if line.startswith("W")]
    assert warning.endswith("test net #0: test_iter 3 x batch_size 10 = 30 images, but layer data reads "
                            "test_lmdb, 25 records: a test scores 5 records twice and the other 20 once, a different "
                            "mix each test; to score each record once at most, use test_iter 2")
    res = cli("trainer", "test", "--model", f"{solver}.net", "--weights", "snap/tiny_iter_2.caffemodel",
              "--iterations", "5", "--quiet", "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert ("warning: --iterations 5 x batch_size 10 = 50 images, but layer data reads test_lmdb, 25 records: "
            "a test scores every record twice; to score each record once at most, use --iterations 2") in res.stderr


def test_missing_recipe_files_say_which_fetch_command_makes_them(project, tmp_path, cli):
    """The README's fine-tune step names bvlc_reference_caffenet.caffemodel and imagenet_mean.binaryproto bare:
    skipped step 4, a newcomer is told the command that makes each, before the log opens or a net is built."""
    solver = project(max_iter=2)
    res = cli("trainer", "fit", "--solver", solver, "--device", "cpu", "--weights",
              "bvlc_reference_caffenet.caffemodel", cwd=tmp_path)
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        "trainer: error: --weights bvlc_reference_caffenet.caffemodel: file not found; "
        "`datakit fetch-model bvlc_reference_caffenet` downloads it"]
    assert not (tmp_path / "snap/tiny.log").exists()
    res = cli("trainer", "fit", "--solver", solver, "--device", "cpu", "--weights", "mine.caffemodel", cwd=tmp_path)
    assert res.returncode == 1 and res.stderr.strip().endswith("mine.caffemodel: file not found")
    net = tmp_path / f"{solver}.net"
    net.write_text(net.read_text().replace("mean_value: 128", 'mean_file: "imagenet_mean.binaryproto"', 1))
    res = cli("trainer", "fit", "--solver", solver, "--device", "cpu", cwd=tmp_path)
    error = res.stderr.strip().splitlines()[-1]  # after the log's lines of the run that stopped
    assert res.returncode == 1 and error.startswith("trainer: error: ")
    assert ("layer data (Data): imagenet_mean.binaryproto: file not found; `datakit fetch-mean ilsvrc12` downloads "
            "it (relative paths in a net are read from the current directory") in error


def test_the_snapshot_prefix_follows_caffe_1_0s_rule(tmp_path, monkeypatch):
    """Caffe 1.0 (UpgradeSnapshotPrefixProperty): no prefix -> the solver's path without any extension; an
    existing folder -> folder/<solver stem>. We stripped only .prototxt and wrote folder/_iter_N
    (folder/.log for the log), as Caffe did before 1.0."""
    from datakit.formats import caffe_pb2
    from trainer.fit import default_prefix

    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    param = caffe_pb2.SolverParameter
    assert default_prefix("models/solver.prototxt", param()) == "models/solver"
    assert default_prefix("models/lenet.solver", param()) == "models/lenet"
    assert default_prefix("solver", param()) == "solver"
    assert default_prefix("models/solver.prototxt", param(snapshot_prefix="snaps/")) == "snaps/solver"
    assert default_prefix("models/solver.prototxt", param(snapshot_prefix="snaps")) == "snaps/solver"
    assert default_prefix("models/solver.prototxt", param(snapshot_prefix="snaps/run")) == "snaps/run"
