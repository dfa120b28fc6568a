"""`trainer fit` under signals: a repeated Ctrl-C, SIGHUP, a stop during a test pass."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.ctrl_c import ctrl_c_when
from tests.test_fit import project  # noqa: F401  (fixture: a tiny LMDB project in tmp_path)
from trainer.fit import FitOptions, fit
from trainer.snapshot import find_snapshots, read_solverstate


def _start_fit(tmp_path, solver: str, *extra: str) -> subprocess.Popen:
    from tests.conftest import ROOT
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "cli.trainer_main", "fit", "--solver", solver, "--device", "cpu",
                             *extra], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(path, text: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never reached {path}")


def test_a_second_ctrl_c_during_the_snapshot_write_is_ignored(project, tmp_path, monkeypatch):
    """Ctrl-C, then Ctrl-C again while the snapshot is being written: the snapshot is completed."""
    import trainer.solver as solver_mod
    real = solver_mod.write_snapshot

    def impatient(*args, **kw):
        os.kill(os.getpid(), signal.SIGINT)   # the user presses Ctrl-C again ...
        os.kill(os.getpid(), signal.SIGTERM)  # ... and then tries kill
        time.sleep(0.05)                      # the handlers run here, inside the write
        return real(*args, **kw)
    monkeypatch.setattr(solver_mod, "write_snapshot", impatient)
    name = project("twice.prototxt", max_iter=100000, prefix="twice/run")
    log = io.StringIO()
    try:
        with ctrl_c_when(lambda: "Iteration 5, loss" in log.getvalue()):
            result = fit(FitOptions(solver=name, device="cpu", stream=log))
    except KeyboardInterrupt:
        pytest.fail("the second Ctrl-C aborted the snapshot")
    assert result.stopped_early and result.stop_reason == "SIGINT"  # the first signal decides (exit 130)
    found = find_snapshots("twice/run")
    assert found.latest is not None and not found.incomplete
    assert read_solverstate(found.latest).iter == result.iterations
    text = (tmp_path / "twice/run.log").read_text()
    assert text.count("received again while stopping: ignored") == 1


def test_cli_ctrl_c_then_more_signals_still_writes_the_snapshot(project, tmp_path):
    """As a user who keeps pressing Ctrl-C: exit 130, one complete snapshot, a notice to wait, no traceback."""
    name = project("cli.prototxt", max_iter=100000, prefix="many/run")
    proc = _start_fit(tmp_path, name)
    _wait_for(tmp_path / "many/run.log", "Iteration 5, loss", proc)
    proc.send_signal(signal.SIGINT)
    for _ in range(400):
        time.sleep(0.005)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "trainer: interrupted" not in err
    assert "] SIGINT received: stopped after iteration " in err
    found = find_snapshots(str(tmp_path / "many/run"))
    assert found.latest is not None and not found.incomplete
    assert f"resume with --snapshot many/run_iter_{read_solverstate(found.latest).iter}.solverstate" in out


def test_exit_status_is_128_plus_the_signal():
    from trainer.fit import exit_status
    from trainer.solver import SolveResult
    codes = {r: exit_status(SolveResult(3, stopped_early=True, stop_reason=r)) for r in ("SIGINT", "SIGTERM", "SIGHUP")}
    assert codes == {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}


def test_cli_sighup_finishes_the_iteration_and_snapshots(project, tmp_path):
    """SIGHUP (the terminal or ssh session closed) stops as SIGTERM does, with exit 129, as Caffe snapshots on it."""
    name = project("hup.prototxt", max_iter=100000, prefix="hup/run")
    proc = _start_fit(tmp_path, name)
    _wait_for(tmp_path / "hup/run.log", "Iteration 5, loss", proc)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 129, err
    assert "] SIGHUP received: stopped after iteration " in err and "Traceback" not in err
    found = find_snapshots(str(tmp_path / "hup/run"))
    assert found.latest is not None and not found.incomplete
    assert "stopped early (SIGHUP); resume with --snapshot hup/run_iter_" in out


def _on_own_terminal() -> None:
    """In the child: a new session whose controlling terminal is the pty on its stderr, as a login shell's job."""
    import fcntl
    import termios
    fcntl.ioctl(2, termios.TIOCSCTTY, 0)


def test_closing_the_terminal_still_writes_the_snapshot(project, tmp_path):
    """The terminal goes away (its master closed: the kernel sends SIGHUP, then writes to it fail with EIO)."""
    import pty

    from tests.conftest import ROOT
    name = project("tty.prototxt", max_iter=100000, prefix="tty/run")
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "cli.trainer_main", "fit", "--solver", name, "--device", "cpu"],
                                cwd=tmp_path, env=env, stdin=slave, stdout=slave, stderr=slave,
                                start_new_session=True, preexec_fn=_on_own_terminal)
    finally:
        os.close(slave)
    log = tmp_path / "tty/run.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and "Iteration 5, loss" in log.read_text()) and time.monotonic() < deadline:
        try:
            os.read(master, 65536)  # keep the terminal drained, as a terminal window does
        except OSError:
            break
    os.close(master)  # the window or ssh session closes
    assert proc.wait(timeout=60) == 129
    text = log.read_text()
    assert "SIGHUP received: stopped after iteration " in text
    found = find_snapshots(str(tmp_path / "tty/run"))
    assert found.latest is not None and not found.incomplete
    assert f"resume with --snapshot tty/run_iter_{read_solverstate(found.latest).iter}.solverstate" in text


def test_nohup_keeps_sighup_ignored(project, tmp_path):
    """Under nohup (SIGHUP ignored from the start) a hang-up changes nothing: the run goes on."""
    from tests.conftest import ROOT
    name = project("nohup.prototxt", max_iter=100000, prefix="nohup/run")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "cli.trainer_main", "fit", "--solver", name, "--device", "cpu"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    log = tmp_path / "nohup/run.log"
    _wait_for(log, "Iteration 5, loss", proc)
    proc.send_signal(signal.SIGHUP)
    _wait_for(log, "Iteration 30, loss", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "SIGHUP" not in log.read_text() and "] SIGTERM received: stopped after iteration " in err


def _solve_and_close(solver, log):
    """``solver.solve()`` of a ``build``-made run, its nets and log closed afterwards as ``fit`` does."""
    try:
        return solver.solve()
    finally:
        for n in (solver.net, *solver.test_nets):
            n.close()
        log.close()


def _metric_rows(path, phase: str = "test", name: str = "accuracy") -> list[tuple[int, float]]:
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return [(int(r[0]), float(r[3])) for r in rows if r[1] == phase and r[2] == name]


@pytest.mark.parametrize("nets, cut_net", [(1, 0), (2, 1)])
def test_a_stop_during_a_test_pass_records_no_partial_score(project, tmp_path, nets, cut_net):
    """Ctrl-C in the middle of 'Iteration 10, Testing net': no score at 10; the resumed run's test there is the
    only one, and it equals an uninterrupted run's. With two test nets and the stop in #1, #0's score (done
    before the stop) is kept and not tested again."""
    from trainer.fit import build
    for prefix in ("whole/run", "cut/run"):
        name = project(f"{prefix.split('/')[0]}.prototxt", max_iter=15, test_interval=5, prefix=prefix)
        solver_file = tmp_path / name
        solver_file.write_text(solver_file.read_text().replace("test_iter: 3", "test_iter: 40\n" * nets))
    fit(FitOptions(solver="whole.prototxt", device="cpu", stream=io.StringIO(), handle_signals=False))
    solver, log, _ = build(FitOptions(solver="cut.prototxt", device="cpu", stream=io.StringIO(),
                                      handle_signals=False))
    net = solver.test_nets[cut_net]
    forward = net.forward
    calls = {"n": 0}

    def forward_then_ctrl_c():
        out = forward()
        if solver.iter == 10:
            calls["n"] += 1
            if calls["n"] == 7:
                solver.request_stop("SIGINT")  # as the handler does, 7 batches into the test at iteration 10
        return out
    net.forward = forward_then_ctrl_c
    result = _solve_and_close(solver, log)
    assert result.stopped_early and result.iterations == 10
    assert result.test_iteration == 5  # the last complete test is what the summary reports
    text = (tmp_path / "cut/run.log").read_text()
    assert (f"the test at iteration 10 (test net #{cut_net}) was interrupted after 7 of 40 batches and is not "
            "recorded") in text
    phases = ["test"] + [f"test{i}" for i in range(1, nets)]
    cut_phase = phases[cut_net]
    assert [it for it, _ in _metric_rows(tmp_path / "cut/run.metrics.csv", cut_phase)] == [0, 5]
    rest = fit(FitOptions(solver="cut.prototxt", device="cpu", stream=io.StringIO(), handle_signals=False,
                          snapshot="cut/run_iter_10.solverstate"))
    assert rest.iterations == 15
    for phase in phases:
        whole = _metric_rows(tmp_path / "whole/run.metrics.csv", phase)
        cut = _metric_rows(tmp_path / "cut/run.metrics.csv", phase)
        assert [it for it, _ in cut] == [0, 5, 10, 15] and cut == whole, phase
    from trainer.curves import parse_log
    runs = parse_log(tmp_path / "cut/run.log")
    if nets == 1:
        assert [it for run in runs for it, _ in run.test["accuracy"]] == [0, 5, 10, 15]
    else:
        assert "Iteration 10: test net #0 was tested before the stop" in (tmp_path / "cut/run.log").read_text()


def test_a_stop_during_the_final_test_ends_as_a_stop_and_resume_repeats_it(project, tmp_path):
    """The test after max_iter cut short: not 'Optimization Done.' with a partial score, but a stop (exit 130)."""
    from trainer.fit import build, exit_status
    name = project("end.prototxt", max_iter=10, test_interval=5, prefix="end/run")
    (tmp_path / name).write_text((tmp_path / name).read_text().replace("test_iter: 3", "test_iter: 40"))
    solver, log, _ = build(FitOptions(solver=name, device="cpu", stream=io.StringIO(), handle_signals=False))
    forward = solver.test_nets[0].forward

    def forward_then_ctrl_c():
        if solver.iter == 10:
            solver.request_stop("SIGINT")
        return forward()
    solver.test_nets[0].forward = forward_then_ctrl_c
    result = _solve_and_close(solver, log)
    assert result.stopped_early and exit_status(result) == 130 and result.test_iteration == 5
    assert "Optimization Done." not in (tmp_path / "end/run.log").read_text()
    assert [it for it, _ in _metric_rows(tmp_path / "end/run.metrics.csv")] == [0, 5]
    fit(FitOptions(solver=name, device="cpu", stream=io.StringIO(), handle_signals=False,
                   snapshot="end/run_iter_10.solverstate"))
    assert [it for it, _ in _metric_rows(tmp_path / "end/run.metrics.csv")] == [0, 5, 10]
    assert (tmp_path / "end/run.log").read_text().count("Optimization Done.") == 1


def test_test_iter_zero_is_a_config_error_naming_it(project, tmp_path, cli):
    """Was KeyError: 'accuracy' after the log had opened; now one line naming test_iter, before anything is written."""
    name = project("zero.prototxt", prefix="zero/run")
    (tmp_path / name).write_text((tmp_path / name).read_text().replace("test_iter: 3", "test_iter: 0"))
    res = cli("trainer", "fit", "--solver", name, "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "trainer: error: zero.prototxt: test_iter is 0 for test net #0; give the number of test batches per test "
        "(> 0; test_iter x the test net's batch_size images are tested)"]
    assert not (tmp_path / "zero").exists()
