"""assemble on a real Dask LocalCluster (2 worker processes) against a real aiohttp mirror on 127.0.0.1.

Byte-identical lists and failed.csv against the local run, per-host politeness seen from the host, the
dead-list stop, a worker SIGKILLed mid-partition, Ctrl-C and the resume after it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from datakit.assemble import AssembleConfig, assemble, finish, plan, run_partitions
from datakit.download import DownloadOptions
from datakit.errors import DownloadError
from datakit.manifest import open_manifest
from datakit.mirror import MirrorConfig, serve_mirror
from tests.ctrl_c import ctrl_c_when

distributed = pytest.importorskip("distributed", reason="the dist extra (dask.distributed) is not installed")


FAULTS = {"not_found": 0.1, "gone": 0.05, "placeholder": 0.05, "not_image": 0.05, "corrupt": 0.05}
SKIP = {"out", "mirror", "lists", "failed_csv", "elapsed_s", "images_per_s", "partitions", "http_attempts", "bytes"}


@pytest.fixture(scope="module")
def demo_rows():
    return open_manifest("demo")[1]


def _cfg(out: Path, url: str, **kw) -> AssembleConfig:
    options = DownloadOptions(**({"concurrency": 16, "per_host": 4, "retries": 1, "backoff": 0.01,
                                  "read_timeout": 2.0, "timeout": 10, "workers": 2} | kw.pop("options", {})))
    base = dict(manifest="demo", out=out, images=240, seed=4, mirror=url, progress=False, partition_size=50,
                dead_after=30, options=options)
    return AssembleConfig(**(base | kw))


def _files(out: Path, url: str) -> dict[str, bytes]:
    """The lists and failed.csv, byte for byte (the mirror's address, a port of the moment, left out)."""
    return {name: (out / name).read_bytes().replace(url.encode(), b"MIRROR")
            for name in ("train.txt", "test.txt", "failed.csv")}


def test_assemble_on_the_cluster_writes_the_local_lists_and_keeps_per_host_a_cluster_wide_limit(
        tmp_path, dask2, demo_rows):
    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults=FAULTS, seed=5)) as m:
        local = assemble(_cfg(tmp_path / "a", m.url), log=lambda s: None)
        a = _files(tmp_path / "a", m.url)
    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults=FAULTS, seed=5, latency=0.02)) as m:
        there = assemble(_cfg(tmp_path / "b", m.url), log=lambda s: None, executor=dask2)
        peak = m.stats.peak_in_flight
        b = _files(tmp_path / "b", m.url)
    assert local.report.failed > 0 and a == b
    assert sorted(os.listdir(tmp_path / "a" / "images")) == sorted(os.listdir(tmp_path / "b" / "images"))
    ja, jb = local.report.to_json(), there.report.to_json()
    assert {k: v for k, v in ja.items() if k not in SKIP} == {k: v for k, v in jb.items() if k not in SKIP}
    assert 2 <= peak <= 4  # --per-host 4 for the whole run: 2 partitions at a time, 2 each


def test_dead_list_on_the_cluster_runs_only_the_probe(tmp_path, dask2, demo_rows):
    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults={"not_found": 1.0})) as m:
        the_plan = plan(_cfg(tmp_path / "d", m.url, partition_size=20))
        the_plan.images_dir.mkdir(parents=True)
        record = run_partitions(the_plan, dask2)
        asked = sum(m.stats.hits.values())
    assert record.stopped == "dead_list" and asked == 30 and record.never_started == len(the_plan.partitions) - 2
    with pytest.raises(DownloadError, match=r"the first 30 downloads all failed"):
        finish(the_plan, record.results, stopped=record.stopped)


def test_a_worker_killed_mid_partition_gives_the_same_lists(tmp_path, dask2, demo_rows):
    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults=FAULTS, seed=5)) as m:
        assemble(_cfg(tmp_path / "a", m.url, images=300), log=lambda s: None)
        a = _files(tmp_path / "a", m.url)
    images = tmp_path / "b" / "images"
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if images.is_dir() and len(os.listdir(images)) >= 40:
                pid = sorted(dask2.worker_pids().values())[0]  # a worker, by its pid from the cluster
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.01)

    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults=FAULTS, seed=5, latency=0.03)) as m:
        watcher = threading.Thread(target=kill_one, daemon=True)
        watcher.start()
        assemble(_cfg(tmp_path / "b", m.url, images=300, options={"concurrency": 4, "per_host": 4}),
                 log=lambda s: None, executor=dask2)
        watcher.join()
        b = _files(tmp_path / "b", m.url)
    assert killed and killed[0] not in dask2.worker_pids().values()
    assert a == b
    assert not [n for n in os.listdir(images) if n.startswith(".")]


def test_ctrl_c_on_the_client_cancels_the_tasks_and_a_rerun_resumes(tmp_path, dask2, demo_rows):
    out = tmp_path / "d"
    with serve_mirror(MirrorConfig.from_rows(demo_rows, latency=0.05)) as m:
        the_plan = plan(_cfg(out, m.url, images=400, dead_after=0, options={"concurrency": 4, "per_host": 4}))
        the_plan.images_dir.mkdir(parents=True)

        with ctrl_c_when(lambda: len(os.listdir(the_plan.images_dir)) >= 20):
            record = run_partitions(the_plan, dask2)
        finish(the_plan, record.results, stopped=record.stopped)
    assert record.stopped == "interrupted" and record.never_started > 0
    assert not (out / "train.txt").exists()
    time.sleep(1.5)  # partitions already running on a worker finish there (Dask cannot stop a running task)
    with serve_mirror(MirrorConfig.from_rows(demo_rows)) as m:
        result = assemble(_cfg(out, m.url, images=400, dead_after=0), log=lambda s: None, executor=dask2)
        again = sum(m.stats.hits.values())
    assert result.succeeded == 400 and result.present > 0 and again == 400 - result.present


def test_assemble_cli_on_a_local_cluster_writes_the_local_lists(tmp_path, demo_rows, cli):
    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults=FAULTS, seed=5)) as m:
        common = ["--manifest", "demo", "-i", "120", "-s", "3", "--mirror", m.url, "--no-progress",
                  "--partition-size", "40", "--retries", "1", "--backoff", "0.01"]
        a = cli("datakit", "assemble", "--out", str(tmp_path / "a"), *common)
        b = cli("datakit", "assemble", "--out", str(tmp_path / "b"), "--cluster", "local:2", *common)
        assert a.returncode == b.returncode == 0, b.stderr
        assert _files(tmp_path / "a", m.url) == _files(tmp_path / "b", m.url)
    assert a.stdout.splitlines()[-1].split(", ")[:3] == b.stdout.splitlines()[-1].split(", ")[:3]


def test_a_relative_out_on_workers_started_elsewhere_lands_in_the_clients_folder(tmp_path, dask2, demo_rows,
                                                                                monkeypatch):
    """`datakit assemble --out data/x --scheduler ...` with workers started in another folder (here the
    cluster's, started before the client moved to tmp_path): the images were written under the workers'
    folder while the client's lists named files that were not there."""
    monkeypatch.chdir(tmp_path)
    with serve_mirror(MirrorConfig.from_rows(demo_rows, seed=5)) as m:
        result = assemble(_cfg(Path("rel"), m.url, images=60), log=lambda s: None, executor=dask2)
    listed = [line.split()[0] for name in ("train.txt", "test.txt") for line in (tmp_path / "rel" / name).read_text().splitlines()]
    assert result.report.failed == 0 and len(listed) == 60
    assert all((tmp_path / "rel" / path).is_file() for path in listed)
