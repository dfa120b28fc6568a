"""Grids: `trainer grid make / run / status` on tiny nets: order, --jobs, SIGKILL resume, failures."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from datakit.errors import ConfigError
from datakit.formats.caffemodel import read_caffemodel
from datakit.formats.prototxt import parse_net, read_net
from datakit.parallel import InlineExecutor
from tests.conftest import ROOT
from tests.test_fit import make_db
from trainer.grid import NetStatus, grid_status, is_grid
from trainer.grid.make import GridPlan, make_grid
from trainer.grid.runner import run_grid
from trainer.transfer import TransferSpec, transfer_net

NET = """
name: "three"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.0078125 mean_value: 128 } data_param { source: "x" batch_size: 8 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.0078125 mean_value: 128 } data_param { source: "x" batch_size: 10 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" include { phase: TEST } }
"""
SOLVER = """net: "net.prototxt" test_iter: 2 test_interval: 10 base_lr: 0.05 momentum: 0.9 lr_policy: "fixed"
display: 5 max_iter: 30 snapshot: 10 snapshot_prefix: "x" random_seed: 1 solver_mode: CPU
"""
DATA = "data/{split}{half}_{phase}_lmdb"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gridproject")
    (root / "net.prototxt").write_text(NET)
    (root / "solver.prototxt").write_text(SOLVER)
    for i, half in enumerate("AB"):
        make_db(root / f"data/0{half}_train_lmdb", 48, i, size=6)
        make_db(root / f"data/0{half}_test_lmdb", 20, 10 + i, size=6)
    return root


def make(project: Path, out: Path, **kw) -> list[str]:
    plan = GridPlan(net=str(project / "net.prototxt"), solver=str(project / "solver.prototxt"),
                    data=str(project / DATA), **kw)
    return make_grid(out, plan)


def trainer(*args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "cli.trainer_main", *args], capture_output=True, text=True,
                          env=env, timeout=300, **kw)


def blobs(path: Path) -> dict[str, list[bytes]]:
    return {l.name: [b.SerializeToString() for b in l.blobs] for l in read_caffemodel(path).layer if l.blobs}


def test_make_writes_every_family_with_its_command_and_net(project, tmp_path):
    names = make(project, tmp_path / "g", layers=[1, 2], random_frozen=True)
    assert names[:2] == ["half0A", "half0B"]
    assert len(names) == 2 + 2 * 4 * 2 + 2 * 2  # bases, 4 pairs x (frozen, tuned) x n, nolearn A/B x n
    spec = json.loads((tmp_path / "g/transfer-ft0A0B_1_2/net.json").read_text())
    assert (spec["family"], spec["n"], spec["split"], spec["half"], spec["needs"]) == ("AnB+", 2, "0", "B", "half0A")
    assert spec["command"] == ["trainer", "fit", "--solver", "solver.prototxt", "--log", "train.log",
                               "--weights", "../half0A/snapshots/net_iter_30.caffemodel"]
    net = read_net(tmp_path / "g/transfer-ft0A0B_1_2/train_val.prototxt")
    expected = transfer_net(parse_net(NET), TransferSpec(2, frozen=False))
    assert [(l.name, list(l.top), list(l.param)) for l in net.layer] == [
        (l.name, list(l.top), list(l.param)) for l in expected.layer]
    assert net.layer[0].data_param.source == os.path.relpath(project / "data/0B_train_lmdb", tmp_path / "g/x")
    assert net.layer[1].data_param.source.endswith("data/0B_test_lmdb")
    assert json.loads((tmp_path / "g/nolearn0B_1_1/net.json").read_text())["weights"] is None
    assert is_grid(tmp_path / "g") and not is_grid(project)
    with pytest.raises(ConfigError, match="already holds a grid"):
        make(project, tmp_path / "g")
    with pytest.raises(ConfigError, match="--pairs: 'AC'"):
        make(project, tmp_path / "h", pairs=["AC"])


def test_small_grid_end_to_end_with_two_jobs(project, tmp_path):
    grid = tmp_path / "grid"
    done = trainer("grid", "make", str(grid), "--net", str(project / "net.prototxt"), "--solver",
                   str(project / "solver.prototxt"), "--data", str(project / DATA), "--pairs", "AB,BB", "--layers", "1-2")
    assert done.returncode == 0, done.stderr
    ran = trainer("grid", "run", str(grid), "--jobs", "2")
    assert ran.returncode == 0, ran.stderr
    events = [line.split(": ", 1) for line in ran.stderr.splitlines() if ": " in line and not line.startswith("grid")]
    # Two at a time: both bases start before either finishes; every transfer starts after its base is done.
    assert events[:2] == [["half0A", "started"], ["half0B", "started"]]
    finished = {net: i for i, (net, what) in enumerate(events) if what.startswith("done")}
    for i, (_net, what) in enumerate(events):
        if what.startswith("started (copies"):
            assert finished[what.rsplit(" of ", 1)[1].rstrip(")")] < i
    rows = grid_status(grid)
    assert len(rows) == 10 and all(r.state == "done" and r.iteration == 30 for r in rows)
    assert all(r.score is not None and r.best_accuracy >= r.score for r in rows)
    base = blobs(grid / "half0A/snapshots/net_iter_30.caffemodel")
    frozen = blobs(grid / "transfer0A0B_1_2/snapshots/net_iter_30.caffemodel")
    tuned = blobs(grid / "transfer-ft0A0B_1_2/snapshots/net_iter_30.caffemodel")
    assert frozen["conv1"] == base["conv1"] and frozen["conv2"] == base["conv2"] and tuned["conv2"] != base["conv2"]
    assert set(frozen) == {"conv1", "conv2", "fc-new"}
    status = trainer("grid", "status", str(grid))
    assert status.returncode == 0 and "10 done, 0 running, 0 waiting, 0 failed, 0 skipped" in status.stdout
    summary = trainer("grid", "summary", str(grid), "--jobs", "1")
    assert summary.returncode == 0 and "AnB+" in summary.stdout and "BnB" in summary.stdout
    again = trainer("grid", "run", str(grid))
    assert again.returncode == 0 and "0 nets done this run" in again.stdout  # nothing is retrained


def test_one_job_runs_in_grid_order_and_the_status_contract(project, tmp_path):
    names = make(project, tmp_path / "g", layers=[1], pairs=["AB"], families=["AnB", "AnB+"])
    assert [r.state for r in grid_status(tmp_path / "g")] == ["waiting"] * 4
    result = run_grid(tmp_path / "g", executor=InlineExecutor(), stream=io.StringIO())
    assert [o.net for o in result.outcomes] == names and result.count("done") == 4
    field_names = {f.name for f in fields(NetStatus)}
    assert {"net", "family", "n", "split", "state", "iteration", "best_accuracy", "score"} <= field_names
    [row] = [r for r in grid_status(tmp_path / "g") if r.net == "transfer-ft0A0B_1_1"]
    assert (row.family, row.n, row.split, row.state) == ("AnB+", 1, "0", "done")


def test_failure_is_reported_and_its_dependents_skipped(project, tmp_path):
    make(project, tmp_path / "g", layers=[1], pairs=["AB", "BB"], families=["AnB", "BnB"])
    spec = tmp_path / "g/half0A/train_val.prototxt"
    spec.write_text(spec.read_text().replace("0A_train_lmdb", "no_such_lmdb"))
    ran = trainer("grid", "run", str(tmp_path / "g"), "--jobs", "2")
    assert ran.returncode == 1
    assert "half0A: FAILED: " in ran.stderr and "no_such_lmdb" in ran.stderr
    assert "transfer0A0B_1_1: skipped (needs half0A, which failed)" in ran.stderr
    states = {r.net: (r.state, r.reason) for r in grid_status(tmp_path / "g")}
    assert states["half0A"][0] == "failed" and "no_such_lmdb" in states["half0A"][1]
    assert states["transfer0A0B_1_1"] == ("skipped", "needs half0A, which failed")
    assert states["half0B"][0] == states["transfer0B0B_1_1"][0] == "done"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="children stop with their runner via Linux's PR_SET_PDEATHSIG")
def test_resume_after_the_runner_is_killed_retrains_no_finished_net(project, tmp_path):
    grid = tmp_path / "g"
    make(project, grid, layers=[1], pairs=["AB"], families=["AnB"], max_iter=120)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runner = subprocess.Popen([sys.executable, "-m", "cli.trainer_main", "grid", "run", str(grid), "--jobs", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:  # wait until half0A is done and half0B is past a snapshot
        assert time.monotonic() < deadline and runner.poll() is None, "the grid finished before it could be killed"
        rows = {r.net: r for r in grid_status(grid)}
        if rows["half0A"].state == "done" and rows["half0B"].state == "running" and rows["half0B"].iteration >= 25:
            break
        time.sleep(0.05)
    child = rows["half0B"].pid
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    while Path(f"/proc/{child}").exists() and "zombie" not in Path(f"/proc/{child}/status").read_text():
        time.sleep(0.05)  # the training child snapshots and exits when its runner dies
        assert time.monotonic() < deadline
    done_model = (grid / "half0A/snapshots/net_iter_120.caffemodel").read_bytes()
    done_log = (grid / "half0A/train.log").read_text()
    after = grid_status(grid)[1]
    assert after.state == "waiting"   # it said "ready", as if never started
    assert "ended without a word; the next grid run resumes it at its snapshot of iteration" in after.reason
    ran = trainer("grid", "run", str(grid))
    assert ran.returncode == 0, ran.stderr
    assert (grid / "half0A/snapshots/net_iter_120.caffemodel").read_bytes() == done_model
    assert (grid / "half0A/train.log").read_text() == done_log
    assert (grid / "half0A/fit.out").read_text().count("--- ") == 1
    runs = (grid / "half0B/fit.out").read_text().split("--- ")[1:]
    assert len(runs) == 2 and "--snapshot snapshots/net_iter_" in runs[1]
    assert "half0B: done at iteration 120" in ran.stderr and "resumed from iteration" in ran.stderr
    assert [r.state for r in grid_status(grid)] == ["done"] * 3


def test_optional_families_are_named_as_the_authors_named_theirs(project, tmp_path):
    from trainer.grid.names import classify

    names = make(project, tmp_path / "g", layers=[1], pairs=["AB"], families=["AnB", "AnB+"], natman=True,
                 random_frozen=True, reduced=[5], reduced_data=str(project / "data/0A_{phase}_lmdb"),
                 num_output={"A": 3, "B": 3}, data_later=True)  # no natman data: the nets are only looked at
    assert {"halfnatmanA", "halfnatmanB", "transfernatmanAB_1_1", "transfer-ftnatmanAB_1_1", "nolearn0B_1_1",
            "reduced-0005"} <= set(names)
    for name in names:
        spec = json.loads((tmp_path / "g" / name / "net.json").read_text())
        kind = classify(name)
        assert (kind.family, kind.n, kind.split, kind.half, kind.per_class) == (
            spec["family"], spec["n"], spec["split"], spec["half"], spec["per_class"]), name
    natman = read_net(tmp_path / "g/transfernatmanAB_1_1/train_val.prototxt")
    assert natman.layer[0].data_param.source.endswith("data/natmanB_train_lmdb")
    assert read_net(tmp_path / "g/reduced-0005/train_val.prototxt").layer[1].data_param.source.endswith(
        "data/0A_test_lmdb")


def test_interrupting_the_runner_stops_its_net_at_a_snapshot_and_resumes(project, tmp_path):
    grid = tmp_path / "g"
    make(project, grid, layers=[1], pairs=["AB"], families=["AnB"], max_iter=150)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runner = subprocess.Popen([sys.executable, "-m", "cli.trainer_main", "grid", "run", str(grid)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (grid_status(grid)[0].state == "running" and grid_status(grid)[0].iteration >= 15):
        assert time.monotonic() < deadline and runner.poll() is None
        time.sleep(0.05)
    runner.send_signal(signal.SIGINT)  # to the runner only, as `kill -INT` would
    _, err = runner.communicate(timeout=120)
    assert runner.returncode == 130, err
    state = json.loads((grid / "half0A/state.json").read_text())
    assert state["state"] == "interrupted" and grid_status(grid)[0].state == "waiting"
    # status says so (it showed a bare "waiting", and its transfer net "needs half0A")
    assert grid_status(grid)[0].reason == f"{state['reason']}; the next grid run resumes it"
    stopped_at = int(state["reason"].split("iteration ")[1].split()[0])
    assert 15 <= stopped_at < 150 and (grid / f"half0A/snapshots/net_iter_{stopped_at}.solverstate").is_file()
    ran = trainer("grid", "run", str(grid))
    assert ran.returncode == 0 and f"resumed from iteration {stopped_at}" in ran.stderr


def test_sigterm_to_the_runner_stops_its_net_at_a_snapshot_says_so_and_resumes(project, tmp_path):
    """`kill PID` (a job scheduler's stop) killed the runner at once (exit -15, no word): its net was left
    "ended without a word". Now it stops as Ctrl-C does: the net snapshots, is recorded as interrupted, and
    the runner exits 143 naming the command that resumes."""
    grid = tmp_path / "g"
    make(project, grid, layers=[1], pairs=["AB"], families=["AnB"], max_iter=150)
    runner = subprocess.Popen([sys.executable, "-m", "cli.trainer_main", "grid", "run", str(grid)],
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (grid_status(grid)[0].state == "running" and grid_status(grid)[0].iteration >= 15):
        assert time.monotonic() < deadline and runner.poll() is None
        time.sleep(0.05)
    runner.send_signal(signal.SIGTERM)  # to the runner only
    _, err = runner.communicate(timeout=120)
    assert runner.returncode == 143, err
    assert err.strip().splitlines()[-1] == f"trainer: stopped by SIGTERM; `trainer grid run {grid}` resumes the grid"
    assert "Traceback" not in err
    state = json.loads((grid / "half0A/state.json").read_text())
    assert state["state"] == "interrupted" and state["exit_code"] == 143
    stopped_at = int(state["reason"].split("iteration ")[1].split()[0])
    assert 15 <= stopped_at < 150 and (grid / f"half0A/snapshots/net_iter_{stopped_at}.solverstate").is_file()
    ran = trainer("grid", "run", str(grid))
    assert ran.returncode == 0 and f"resumed from iteration {stopped_at}" in ran.stderr
