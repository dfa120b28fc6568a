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
