"""datakit.workerpool: local worker processes never outlive their coordinator, even one killed with SIGKILL.

`datakit convert` and `datakit mean` are started as a user would, killed with SIGKILL while their pool is
working, and then no process of their process group may be left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from datakit.formats.datum import encode_datum_bytes
from datakit.db.lmdb_backend import LmdbWriter
from datakit.parallel import LocalExecutor, default_workers, worker_pool

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/proc/self/stat").exists(),
                                reason="the parent-death signal and /proc are Linux's")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, process group) of a live process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2])


def _running(pids) -> list[int]:
    return [p for p in pids if (s := _stat(p)) is not None and s[0] not in ("Z", "X")]


def _group(pgid: int) -> list[int]:
    """Every live (not zombie) process of process group `pgid`."""
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    return [p for p in pids if (s := _stat(p)) is not None and s[2] == pgid and s[0] not in ("Z", "X")]


def _children(pid: int) -> list[int]:
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    return [p for p in pids if (s := _stat(p)) is not None and s[1] == pid]


def _kill_mid_run_and_check(cmd: list[str], workers: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: the pool is found by group
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and len(_children(proc.pid)) < workers:
            time.sleep(0.01)
        time.sleep(0.3)  # the workers are busy now
        assert proc.poll() is None, "the command finished before it could be killed: make the input bigger"
        pool = _children(proc.pid)
        assert len(pool) >= workers, f"expected {workers} workers, found {pool}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (_running(pool) or _group(proc.pid)):
            time.sleep(0.05)
        assert not _running(pool), f"workers {_running(pool)} outlived their killed parent"
        assert not _group(proc.pid), f"processes {_group(proc.pid)} of the killed command's group are left"
    finally:
        for pid in _group(proc.pid):  # never leave them behind, even when the test fails
            os.kill(pid, signal.SIGKILL)


def _jpeg(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


@pytest.mark.slow
def test_sigkill_of_convert_leaves_no_worker(tmp_path):
    (tmp_path / "img").mkdir()
    originals = []
    for i in range(8):
        p = tmp_path / "img" / f"orig{i}.jpg"
        p.write_bytes(_jpeg(320, i))
        originals.append(p)
    lines = []
    for i in range(6000):  # hard links: many distinct list entries, few bytes on disk
        os.link(originals[i % 8], tmp_path / "img" / f"{i}.jpg")
        lines.append(f"{i}.jpg {i % 5}\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    cmd = [sys.executable, "-m", "cli.datakit_main", "convert", str(tmp_path / "img"), str(tmp_path / "list.txt"),
           str(tmp_path / "db"), "--workers", "2", "--resize-height", "256", "--resize-width", "256",
           "--no-progress"]
    _kill_mid_run_and_check(cmd, 2)


@pytest.mark.slow
def test_sigkill_of_mean_leaves_no_worker(tmp_path):
    value = encode_datum_bytes(_jpeg(256, 0), 1)
    writer = LmdbWriter(tmp_path / "db")
    for start in range(0, 8000, 1000):
        writer.write([(f"{i:08d}_x.jpg".encode(), value) for i in range(start, start + 1000)])
    writer.close()
    cmd = [sys.executable, "-m", "cli.datakit_main", "mean", str(tmp_path / "db"), str(tmp_path / "mean.npy"),
           "--workers", "2", "--no-progress"]
    _kill_mid_run_and_check(cmd, 2)


def _pid(_: int = 0) -> int:
    return os.getpid()


def test_pool_workers_ask_for_the_parent_death_signal():
    """Each worker of both kinds of local pool has PR_SET_PDEATHSIG set to SIGKILL (read back with PR_GET)."""
    with worker_pool(2) as pool:
        assert set(pool.map(_pdeathsig, range(4))) == {int(signal.SIGKILL)}
    with LocalExecutor(2) as ex:
        assert {ex.submit(_pdeathsig).result() for _ in range(4)} == {int(signal.SIGKILL)}


def _pdeathsig(_: int = 0) -> int:
    import ctypes
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    out = ctypes.c_int(0)
    assert libc.prctl(2, ctypes.byref(out), 0, 0, 0) == 0  # PR_GET_PDEATHSIG
    return out.value


def test_default_workers_is_the_usable_cores():
    assert default_workers() == len(os.sched_getaffinity(0))
