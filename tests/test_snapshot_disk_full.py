"""Snapshots on a full disk: one line naming the path and the space needed, never a partial set.

Two ways to fill a disk: a small tmpfs the test mounts (needs root and a kernel that lets
it mount; skipped with the reason otherwise), and ENOSPC simulated at fsync, where real
file systems (NFS, quotas, delayed allocation) report it, for machines that cannot mount.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from datakit.formats import caffe_pb2
from tests.test_fit import project  # noqa: F401  (fixture: a tiny LMDB project in tmp_path)
from trainer import snapshot as snap
from trainer.fit import FitOptions, fit
from trainer.snapshot import SnapshotError, find_snapshots, read_solverstate, write_snapshot


def _state_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def small_fs(tmpfs):
    """A 1 MiB tmpfs, unmounted afterwards."""
    return tmpfs("1m", why="the ENOSPC simulation below covers this case")


def _fill(folder: Path, leave: int) -> None:
    """Fill ``folder``'s file system up to ``leave`` free bytes."""
    free = snap.free_bytes(folder)
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def _net(kb: int) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter(name="n")
    layer = net.layer.add(name="fc", type="InnerProduct")
    layer.blobs.add().data.extend([0.5] * (kb * 256))
    return net


def test_cli_fit_on_a_full_tmpfs_is_one_line_and_keeps_earlier_snapshots(small_fs, project, tmp_path, cli):  # noqa: F811
    name = project("full.prototxt", max_iter=6, snapshot=3, test_interval=0, prefix=f"{small_fs}/run")
    res = cli("trainer", "fit", "--solver", name, "--device", "cpu", "--quiet", "--max-iter", "3", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    _fill(small_fs, 96 * 1024)  # room for log lines, not for a snapshot (weights + state + sidecar + slack)
    res = cli("trainer", "fit", "--solver", name, "--device", "cpu", "--quiet",
              "--snapshot", f"{small_fs}/run_iter_3.solverstate", cwd=tmp_path)
    assert res.returncode == 1
    [line] = res.stderr.strip().splitlines()
    assert f"{small_fs}/run_iter_6.solverstate: not enough space for the snapshot: it needs" in line
    assert f"free in {small_fs}; nothing was written (snapshot of iteration 6); the latest complete snapshot is " \
           f"{small_fs}/run_iter_3.solverstate" in line
    files = _state_files(small_fs)
    assert not [f for f in files if "iter_6" in f or f.endswith(".part")], files
    assert read_solverstate(small_fs / "run_iter_3.solverstate").iter == 3


def test_real_enospc_on_tmpfs_removes_every_temporary(small_fs, monkeypatch):
    """The space check passes (told so) but the file system fills: still nothing half-written."""
    write_snapshot(str(small_fs / "s"), 1, _net(8), [], 0, {"iter": 1})
    monkeypatch.setattr(snap, "free_bytes", lambda folder: 1 << 40)
    with pytest.raises(SnapshotError, match=r"s_iter_2\.solverstate: no space left on device while writing the "
                                            r"snapshot: it needs [0-9.]+ (kB|MB)"):
        write_snapshot(str(small_fs / "s"), 2, _net(2048), [], 0, {"iter": 2})  # 2 MiB of weights, 1 MiB disk
    assert _state_files(small_fs) == ["s_iter_1.caffemodel", "s_iter_1.solverstate", "s_iter_1.solverstate.json"]
    assert find_snapshots(str(small_fs / "s")).latest == small_fs / "s_iter_1.solverstate"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names the file being fsynced through /proc/self/fd (Linux)")
def test_simulated_enospc_mid_snapshot_in_fit(project, tmp_path, monkeypatch):  # noqa: F811
    """ENOSPC at the second file of the iteration-6 snapshot: fit stops with one message, no iter_6 files."""
    name = project("sim.prototxt", max_iter=6, snapshot=3, test_interval=0, prefix="sim/run")
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if "iter_6" in target:
            calls["n"] += 1
            if calls["n"] == 2:  # the weights made it to a temporary; the sidecar does not
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(SnapshotError) as err:
        fit(FitOptions(solver=name, device="cpu", stream=io.StringIO(), handle_signals=False))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("sim/run_iter_6.solverstate: no space left on device while writing the snapshot: it needs")
    assert "(snapshot of iteration 6); the latest complete snapshot is sim/run_iter_3.solverstate" in message
    assert calls["n"] == 2
    assert [f for f in _state_files(tmp_path / "sim") if "_iter_" in f or ".part" in f] == ["run_iter_3.caffemodel", "run_iter_3.solverstate",
                                              "run_iter_3.solverstate.json"]


def test_the_solverstate_is_renamed_last_and_an_old_one_removed_first(tmp_path, monkeypatch):
    """A run killed between two renames leaves weights without a solverstate: reported as incomplete."""
    write_snapshot(str(tmp_path / "r"), 5, _net(1), [], 0, {"iter": 5})
    order: list[str] = []
    real_replace = os.replace

    def replace(src, dst) -> None:
        order.append(Path(dst).name)
        if Path(dst).name.endswith(".solverstate"):
            raise KeyboardInterrupt  # killed just before the commit mark
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_snapshot(str(tmp_path / "r"), 5, _net(1), [], 0, {"iter": 5})
    monkeypatch.undo()
    assert order == ["r_iter_5.caffemodel", "r_iter_5.solverstate.json", "r_iter_5.solverstate"]
    found = find_snapshots(str(tmp_path / "r"))
    assert found.complete == [] and [p.name for p in found.incomplete] == ["r_iter_5.caffemodel",
                                                                           "r_iter_5.solverstate.json"]
    with pytest.raises(Exception, match=r"r_iter_5\.solverstate: cannot read solver state: no such file; "
                                        r"r_iter_5\.caffemodel is there without it: an incomplete snapshot"):
        read_solverstate(tmp_path / "r_iter_5.solverstate")
    assert not list(tmp_path.glob(".*.part"))


def test_temporaries_of_a_killed_write_are_removed_by_the_next_one(tmp_path):
    stale = tmp_path / ".k_iter_2.caffemodel.999999.part"
    stale.write_bytes(b"\0" * 1000)
    write_snapshot(str(tmp_path / "k"), 2, _net(1), [], 0, None)
    assert not stale.exists() and _state_files(tmp_path) == ["k_iter_2.caffemodel", "k_iter_2.solverstate"]


def test_a_sidecar_from_another_iteration_is_not_used(tmp_path):
    paths = write_snapshot(str(tmp_path / "q"), 4, _net(1), [], 0, {"iter": 4, "losses": [1.0]})
    paths.sidecar.write_text(paths.sidecar.read_text().replace('"iter": 4', '"iter": 9'))
    state = read_solverstate(paths.solverstate)
    assert state.extra is None and "is for iteration 9, the solver state for 4: not used" in state.note


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) to fail writes with ENOSPC")
def test_a_log_on_a_full_disk_warns_once_and_training_goes_on():
    from trainer.caffelog import CaffeLog
    out = io.StringIO()
    log = CaffeLog("/dev/full", stream=out)
    log.info("first")
    log.info("second")
    log.close()
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("] first") and lines[2].endswith("] second")
    assert "cannot write the log /dev/full: No space left on device; it stops here, training goes on" in lines[1]
    assert len(lines) == 3
