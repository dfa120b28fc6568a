"""Shared fixtures: where the real Caffe reference files are, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# CI lays ../shared beside the checkout; DATAKIT_SHARED overrides for other layouts.
SHARED_DATA = Path(os.environ.get("DATAKIT_SHARED", ROOT.parent / "shared")) / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real Caffe files and datasets; skips the test when absent."""
    if not (SHARED_DATA / "PROVENANCE.md").is_file():
        pytest.skip(f"reference data not found at {SHARED_DATA} (set DATAKIT_SHARED to the shared/ folder)")
    return SHARED_DATA


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m cli.<tool>_main ARGS` as a user would run the console script."""
    tool, *rest = args
    module = {"datakit": "cli.datakit_main", "trainer": "cli.trainer_main"}[tool]
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", module, *rest], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs file systems for full-disk tests: ``tmpfs("8m")`` -> its folder.

    Every one is unmounted afterwards. Skips, saying why, where this process may not mount
    (not root, or no mount permission in this container); ``why`` adds what covers the case then.
    """
    mounted: list[Path] = []

    def mount(size: str, why: str = "") -> Path:
        note = f" ({why})" if why else ""
        if os.geteuid() != 0:
            pytest.skip(f"mounting a tmpfs needs root{note}")
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"may not mount a tmpfs here: {res.stderr.strip() or res.returncode}{note}")
        mounted.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for mnt in mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def wait_until_written(progress: Path, proc: subprocess.Popen, at_least: int, timeout: float = 60) -> None:
    """Wait until a running `datakit convert` has saved progress for ``at_least`` records.

    Paced on convert's own progress file, never on a sleep; fails the test if the process
    finished first (then it could not be interrupted mid-run).
    """
    import json
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(progress.read_text())["written"] >= at_least:
                break
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    assert proc.poll() is None, "the conversion finished before it could be interrupted"


@pytest.fixture(scope="module")
def dask2():
    """A real Dask LocalCluster of 2 worker processes on 127.0.0.1, one per test module.

    Per module, not per session: some modules SIGKILL workers, and the next module should not
    start while the nannies are still replacing them.
    """
    pytest.importorskip("distributed", reason="the dist extra (dask.distributed) is not installed")
    from datakit.cluster import open_executor
    ex = open_executor(cluster="local:2")
    try:
        yield ex
    finally:
        ex.close()
