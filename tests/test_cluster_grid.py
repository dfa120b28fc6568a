"""`trainer grid run` on a real Dask LocalCluster: each net a task after its base; a worker SIGKILLed mid-net
has that net retried from its last snapshot."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.test_grid_runner import blobs, make, project, trainer  # noqa: F401 - `project` is a fixture
from trainer.grid import grid_status
from trainer.grid.runner import run_grid

distributed = pytest.importorskip("distributed", reason="the dist extra (dask.distributed) is not installed")

from datakit.cluster import open_executor  # noqa: E402


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_tiny_grid_on_the_cluster_and_a_worker_killed_mid_net(project, tmp_path):  # noqa: F811
    grid = tmp_path / "g"
    make(project, grid, layers=[1], pairs=["AB"], families=["AnB"], max_iter=120)
    ex = open_executor(cluster="local:2")
    try:
        killed: list[int] = []
        import threading

        def kill_worker_of_half0b() -> None:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                rows = {r.net: r for r in grid_status(grid)}
                if rows["half0B"].state == "running" and rows["half0B"].iteration >= 25 and rows["half0B"].pid:
                    worker = _parent(rows["half0B"].pid)
                    assert worker in ex.worker_pids().values()  # the worker, by its pid from the cluster
                    os.kill(worker, signal.SIGKILL)
                    killed.append(worker)
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=kill_worker_of_half0b, daemon=True)
        watcher.start()
        result = run_grid(grid, executor=ex, stream=None)
        watcher.join()
    finally:
        ex.close()
    assert killed, "half0B finished before its worker could be killed"
    assert [r.state for r in grid_status(grid)] == ["done"] * 3
    by_net = {o.net: o for o in result.outcomes}
    assert by_net["half0B"].resumed_from is not None and by_net["half0B"].resumed_from >= 10
    runs = (grid / "half0B/fit.out").read_text().split("--- ")[1:]
    assert len(runs) == 2 and "--snapshot snapshots/net_iter_" in runs[1]
    # the transfer net ran after its base, from the base's final weights
    assert blobs(grid / "transfer0A0B_1_1/snapshots/net_iter_120.caffemodel")["conv1"] == \
        blobs(grid / "half0A/snapshots/net_iter_120.caffemodel")["conv1"]
    assert (grid / "half0A/fit.out").read_text().count("--- ") == 1  # nothing trained twice


def test_grid_run_cli_on_a_local_cluster(project, tmp_path):  # noqa: F811
    grid = tmp_path / "g"
    make(project, grid, layers=[1], pairs=["AB"], families=["AnB"])
    ran = trainer("grid", "run", str(grid), "--cluster", "local:2")
    assert ran.returncode == 0, ran.stderr
    assert "3 nets done this run, 0 failed, 0 skipped" in ran.stdout
    bad = trainer("grid", "run", str(grid), "--resources", "GPU=1")
    assert bad.returncode != 0 and "--scheduler or --cluster" in bad.stderr


def test_a_relative_grid_on_workers_started_elsewhere(project, tmp_path, monkeypatch):  # noqa: F811
    """`trainer grid run g --scheduler ...` from a folder the workers were not started in: each net's
    folder is handed to them as an absolute path (a relative one was looked for in their folder)."""
    grid = tmp_path / "g"
    make(project, grid, layers=[1], pairs=["AB"], families=["AnB"], max_iter=20)
    ex = open_executor(cluster="local:1")     # its worker starts in this (the tests') folder
    try:
        monkeypatch.chdir(tmp_path)
        result = run_grid("g", executor=ex, stream=None)
    finally:
        ex.close()
    assert [o.state for o in result.outcomes] == ["done"] * 3, [o.reason for o in result.outcomes]


class _RemoteWorkers:
    """The executor seam as a cluster of other machines looks from the client: a submitted net
    starts there (its running.json names that host and a pid of that machine), and the user's
    Ctrl-C arrives while the client waits for it."""

    workers = 1

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cancelled: list = []

    def submit(self, fn, folder):
        Path(folder, "running.json").write_text(json.dumps({"pid": self.pid, "started": 0, "host": "gpu-node-7"}))
        return object()

    def as_completed(self, futures):
        raise KeyboardInterrupt

    def cancel(self, futures):
        self.cancelled += list(futures)


def test_ctrl_c_never_signals_a_local_process_with_a_remote_nets_pid(project, tmp_path):  # noqa: F811
    """Ctrl-C of `trainer grid run --scheduler ...`: a net running on another machine has a pid of
    that machine; the runner sent SIGTERM to whatever process has that pid here."""
    import io
    import subprocess
    import sys

    grid = tmp_path / "g"
    make(project, grid, layers=[1], pairs=["AB"], families=["AnB"])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])   # has "that pid" here
    try:
        ex = _RemoteWorkers(bystander.pid)
        out = io.StringIO()
        with pytest.raises(KeyboardInterrupt):
            run_grid(grid, executor=ex, stream=out)
        time.sleep(0.5)
        assert bystander.poll() is None, "a process on the client's machine was sent SIGTERM"
        assert ex.cancelled and "half0A: running on gpu-node-7, where it finishes" in out.getvalue()
    finally:
        bystander.kill()
        bystander.wait()
