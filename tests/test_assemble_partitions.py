"""assemble as plan -> run_partition -> finish over an executor: same results anywhere, the coordinator's stops.

Every test runs against a real aiohttp mirror on 127.0.0.1.
"""

from __future__ import annotations

import re

import csv
import os
import signal
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from datakit.assemble import AssembleConfig, assemble, finish, plan, run_partition, run_partitions, split_jobs
from datakit.download import DownloadOptions, FetchJob, Kind
from datakit.errors import ConfigError, DownloadError, ListError
from datakit.manifest import open_manifest
from datakit.mirror import MirrorConfig, fault_for, serve_mirror
from datakit.parallel import Executor, InlineExecutor, LocalExecutor
from tests.ctrl_c import ctrl_c_when

# faults whose outcome does not depend on how often a path was asked (no 'flaky', no timeouts)
FAULTS = {"not_found": 0.1, "gone": 0.05, "placeholder": 0.05, "not_image": 0.05, "corrupt": 0.05}


@pytest.fixture(scope="module")
def demo_rows():
    return open_manifest("demo")[1]


def _fast(**kw) -> DownloadOptions:
    base = dict(concurrency=16, retries=1, backoff=0.01, read_timeout=2.0, timeout=10, workers=2)
    base.update(kw)
    return DownloadOptions(**base)


def _cfg(out: Path, url: str, **kw) -> AssembleConfig:
    base = dict(manifest="demo", out=out, images=240, seed=4, mirror=url, progress=False, partition_size=50,
                dead_after=30, options=_fast())
    base.update(kw)
    return AssembleConfig(**base)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _failed(out: Path) -> list[tuple[str, str, str]]:
    with open(out / "failed.csv", newline="") as fh:
        return sorted((r["id"], r["name"], r["reason"]) for r in csv.DictReader(fh))


class Recording(Executor):
    """The executor seam with a tally: delegates to a real executor, counts submits and cancels."""

    def __init__(self, inner: Executor) -> None:
        self.inner, self.workers, self.name = inner, inner.workers, inner.name
        self.submitted = 0
        self.cancelled: list = []

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return self.inner.submit(fn, *args, **kwargs)

    def as_completed(self, futures):
        return self.inner.as_completed(futures)

    def cancel(self, futures):
        futures = list(futures)
        self.cancelled += futures
        self.inner.cancel(futures)

    def close(self) -> None:
        self.inner.close()


def test_split_jobs_ends_the_probe_at_dead_after_then_uses_partition_size() -> None:
    jobs = [FetchJob(i, f"http://h/{i}.jpg", Path(f"{i}.jpg")) for i in range(130)]
    parts = split_jobs(jobs, 50, 70)
    assert [len(p.jobs) for p in parts] == [50, 20, 50, 10]
    assert [p.probe for p in parts] == [True, True, False, False]
    assert [j.key for p in parts for j in p.jobs] == list(range(130))
    assert all(j.partition == p.index for p in parts for j in p.jobs)
    assert [len(p.jobs) for p in split_jobs(jobs, 50, 0)] == [50, 50, 30]
    assert [len(p.jobs) for p in split_jobs(jobs[:10], 50, 300)] == [10]


def test_run_partition_in_worker_processes_gives_the_inline_outcomes(tmp_path: Path, demo_rows) -> None:
    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults=FAULTS, seed=5)) as m:
        inline_plan = plan(_cfg(tmp_path / "inline", m.url))
        pooled_plan = plan(_cfg(tmp_path / "pooled", m.url))
        for p in (inline_plan, pooled_plan):
            p.images_dir.mkdir(parents=True)
        part, other = inline_plan.partitions[2], pooled_plan.partitions[2]
        here = run_partition(part.jobs, inline_plan.options, part.index)
        with LocalExecutor(1, kind="processes") as pool:  # pickled there and back
            there = pool.submit(run_partition, other.jobs, pooled_plan.options, other.index).result()
        assert there.index == here.index == 2 and not there.interrupted
        assert dict(there.stats.kinds) == dict(here.stats.kinds)
        assert sorted(there.ok_names) == sorted(here.ok_names)
        assert sorted((o.job.key, o.kind) for o in there.failures) == sorted((o.job.key, o.kind) for o in here.failures)
        assert all(isinstance(o.kind, Kind) for o in there.failures)
        assert sorted(p.name for p in pooled_plan.images_dir.iterdir()) == sorted(there.ok_names)

        # the whole stage: two worker processes give the lists, failed.csv and counts of the inline default
        a = assemble(_cfg(tmp_path / "a", m.url), log=lambda s: None)
        with LocalExecutor(2, kind="processes") as pool:
            b = assemble(_cfg(tmp_path / "b", m.url), log=lambda s: None, executor=pool)
    expected = Counter(str(k) for k in (fault_for(urlsplit(r.url).path, FAULTS, 5) for r in inline_plan.selected) if k)
    assert sum(expected.values()) == a.report.failed > 0
    for split in ("train", "test"):
        assert _lines(tmp_path / "a" / f"{split}.txt") == _lines(tmp_path / "b" / f"{split}.txt")
    assert _failed(tmp_path / "a") == _failed(tmp_path / "b")
    skip = {"out", "lists", "failed_csv", "elapsed_s", "images_per_s", "partitions"}
    ja, jb = a.report.to_json(), b.report.to_json()
    assert {k: v for k, v in ja.items() if k not in skip} == {k: v for k, v in jb.items() if k not in skip}
    assert [p["partition"] for p in ja["partitions"]] == [p["partition"] for p in jb["partitions"]] == list(range(6))


def test_dead_list_runs_the_probe_alone_and_never_starts_the_rest(tmp_path: Path, demo_rows) -> None:
    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults={"not_found": 1.0})) as m:
        the_plan = plan(_cfg(tmp_path / "d", m.url, partition_size=20))
        assert [len(p.jobs) for p in the_plan.partitions][:3] == [20, 10, 20] and len(the_plan.partitions) == 13
        the_plan.images_dir.mkdir(parents=True)
        with Recording(LocalExecutor(2, kind="threads")) as ex:
            record = run_partitions(the_plan, ex)
        asked = sum(m.stats.hits.values())
    assert record.stopped == "dead_list"
    assert asked == 30  # exactly the probe's requests, none of the 210 others
    assert ex.submitted == record.submitted == 2 and record.never_started == 11
    with pytest.raises(DownloadError, match=r"the first 30 downloads all failed \(http_404 x30\)"):
        finish(the_plan, record.results, stopped=record.stopped)
    assert len(_failed(tmp_path / "d")) == 30 and not (tmp_path / "d" / "train.txt").exists()


def _images_in(folder: Path, count: int):
    """True once `count` images are in `folder` (the moment the test presses Ctrl-C)."""
    return lambda: folder.is_dir() and sum(1 for p in folder.iterdir() if not p.name.startswith(".")) >= count


@pytest.mark.parametrize("kind", ["inline", "threads"])
def test_ctrl_c_cancels_the_partitions_left_and_keeps_what_finished(tmp_path: Path, demo_rows, kind: str) -> None:
    out = tmp_path / "d"
    with serve_mirror(MirrorConfig.from_rows(demo_rows, latency=0.05)) as m:
        the_plan = plan(_cfg(out, m.url, images=400, dead_after=0, options=_fast(concurrency=4)))
        the_plan.images_dir.mkdir(parents=True)
        inner = InlineExecutor() if kind == "inline" else LocalExecutor(2, kind="threads")
        with ctrl_c_when(_images_in(the_plan.images_dir, 20)), Recording(inner) as ex:
            record = run_partitions(the_plan, ex)
        result = finish(the_plan, record.results, stopped=record.stopped)
    assert record.stopped == "interrupted"
    assert len(the_plan.partitions) == 8 and record.never_started > 0 and ex.submitted < 8
    if kind == "threads":  # two ran, two waited in the queue: those two were cancelled, never run
        assert record.cancelled >= 1 and len(ex.cancelled) >= 1
    on_disk = {p.name for p in the_plan.images_dir.iterdir() if not p.name.startswith(".")}
    reported = {n for r in record.results for n in r.ok_names}
    # (a Ctrl-C landing in the instant between two partitions may leave one partition's count out; never its files)
    assert reported <= on_disk and 20 <= len(on_disk) < 400
    assert result.report.stopped == "interrupted" and result.report.downloaded == len(reported)
    assert result.report.line().startswith(f"Interrupted: {len(reported)} downloaded")
    assert not (out / "train.txt").exists() and (out / "failed.csv").is_file()
    # and the next run asks only for the rest
    with serve_mirror(MirrorConfig.from_rows(demo_rows)) as m:
        again = plan(_cfg(out, m.url, images=400, dead_after=0))
        assert again.present == on_disk and again.attempted == 400 - len(on_disk)


def test_plan_resumes_writes_nothing_and_skips_permanent_failures(tmp_path: Path, demo_rows) -> None:
    faults = {"not_found": 0.15, "server_error": 0.1}
    out = tmp_path / "d"
    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults=faults, seed=2)) as m:
        first = plan(_cfg(out, m.url))
        assert not out.exists()  # planning reads, never writes
        assert first.attempted == 240 and not first.present
        result = assemble(_cfg(out, m.url), log=lambda s: None)
        again = plan(_cfg(out, m.url))
    fault = {Path(j.dest).name: fault_for(urlsplit(j.url).path, faults, 2) for j in first.jobs}
    assert again.present == {n for n, f in fault.items() if f is None}
    assert {j.dest.name for j in again.jobs} == {n for n, f in fault.items() if f == "server_error"}
    assert {rec["name"] for rec in again.carried} == {n for n, f in fault.items() if f == "not_found"}
    assert result.report.failures == {"http_404": sum(f == "not_found" for f in fault.values()),
                                      "http_500": sum(f == "server_error" for f in fault.values())}


def test_report_keeps_its_keys_and_says_its_line(tmp_path: Path, demo_rows) -> None:
    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults={"not_found": 0.2}, seed=1)) as m:
        cfg = _cfg(tmp_path / "d", m.url, images=50)
        hashes = cfg.options.placeholder_sha1
        result = assemble(cfg, log=lambda s: None)
    assert cfg.options.placeholder_sha1 == hashes  # the recipe's placeholder joins a copy, not the caller's options
    report = result.report
    assert list(report.to_json()) == [
        "manifest", "recipe", "seed", "images", "labels", "out", "mirror", "rewrite", "selected", "unique_files",
        "already_present", "attempted", "downloaded", "succeeded", "failed", "failures",
        "skipped_permanent_failures", "bytes", "http_attempts", "elapsed_s", "images_per_s", "stopped", "lists",
        "failed_csv", "partitions"]
    assert report["failures"] == report.failures == {"http_404": report.failed}
    assert report.line().startswith(f"{report.downloaded} downloaded, 0 already present, {report.failed} failed "
                                    f"(http_404 {report.failed}; see ")


def test_option_checks_live_in_the_library(tmp_path: Path, cli) -> None:
    with pytest.raises(ConfigError, match=r"--concurrency 0: must be positive"):
        DownloadOptions(concurrency=0).validate()
    with pytest.raises(ConfigError, match=r"--retries -1: must be positive"):
        DownloadOptions(retries=-1).validate()
    with pytest.raises(ConfigError, match=r"--resize-mode 'middle'"):
        DownloadOptions(resize_mode="middle").validate()
    with pytest.raises(ConfigError, match=r"--partition-size 0: must be positive"):
        AssembleConfig(partition_size=0).validate()
    with pytest.raises(ConfigError, match=r"--max-pixels 0"):
        plan(AssembleConfig(manifest="demo", out=tmp_path / "x", options=DownloadOptions(max_pixels=0)))
    with pytest.raises(ConfigError, match=r"add up to 1.2, more than 1"):
        MirrorConfig(faults={"not_found": 0.7, "gone": 0.5}).validate()
    with pytest.raises(ConfigError, match=r"give --manifest"):
        MirrorConfig.for_manifest(None)
    config = MirrorConfig.for_manifest("demo", faults={"gone": 0.1})
    assert len(config.labels) == 3000 and not config.any_path
    r = cli("datakit", "assemble", "--manifest", "demo", "--out", str(tmp_path / "o"), "--partition-size", "0")
    assert r.returncode == 1 and r.stderr.strip() == "datakit: error: --partition-size 0: must be positive"
    assert not (tmp_path / "o").exists()


def _manifest(path: Path, labels: list[int]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "image_url", "page_url", "label", "_split"])
        for i, label in enumerate(labels):
            w.writerow([i, f"http://h/a/{i}.jpg", "", label, "train"])
    return path


@pytest.mark.parametrize("labels,args,message", [
    ([], [], "manifest has no rows"),
    ([3, 4, 3], ["--labels", "2"], "no row has a label below --labels 2 (3 rows, labels 3..4)"),
])
def test_an_empty_manifest_or_selection_is_an_error_and_writes_nothing(tmp_path: Path, cli, labels, args,
                                                                      message) -> None:
    manifest = _manifest(tmp_path / "m.csv", labels)
    out = tmp_path / "out"
    r = cli("datakit", "assemble", "--manifest", str(manifest), "--out", str(out), "--mirror", "http://127.0.0.1:9",
            "--report", str(tmp_path / "r.json"), *args)
    assert r.returncode == 1
    [line] = r.stderr.strip().splitlines()
    assert str(manifest) in line and message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]  # no OUT, no images/, no report
    with pytest.raises(ListError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(AssembleConfig(manifest=str(manifest), out=out, labels=int(args[1]) if args else 0))


def test_a_full_disk_stops_the_run_with_one_error_and_the_rerun_resumes(tmp_path: Path, demo_rows,
                                                                       monkeypatch) -> None:
    """Before: writes failing with ENOSPC ended the run quietly and wrote lists of what had fit (exit 0)."""
    import datakit.download.store as store
    real, calls = os.write, []

    def fills_up(fd, data):
        calls.append(1)
        if len(calls) > 15:
            raise OSError(28, "No space left on device")
        return real(fd, data)

    out = tmp_path / "d"
    with serve_mirror(MirrorConfig.from_rows(demo_rows)) as m:
        monkeypatch.setattr(store.os, "write", fills_up)
        with pytest.raises(DownloadError, match=r"images/.*\.jpg: cannot write the image \(No space left on device\)"):
            assemble(_cfg(out, m.url, images=80), log=lambda s: None)
        monkeypatch.undo()
        kept = {p.name: p.stat().st_ino for p in (out / "images").iterdir()}
        assert 10 <= len(kept) <= 15 and not any(n.startswith(".") for n in kept)  # no temporaries left
        assert not (out / "train.txt").exists()
        result = assemble(_cfg(out, m.url, images=80), log=lambda s: None)
    assert result.succeeded == 80 and result.present == len(kept)
    assert all((out / "images" / n).stat().st_ino == ino for n, ino in kept.items())


_WORKERS_RUN = """
import sys
from pathlib import Path
from datakit.assemble import AssembleConfig, assemble
from datakit.download import DownloadOptions
from datakit.parallel import LocalExecutor
with LocalExecutor(2, kind="processes") as ex:
    r = assemble(AssembleConfig(manifest="demo", out=Path(sys.argv[2]), images=400, seed=1, mirror=sys.argv[1],
                                progress=False, partition_size=40, dead_after=0,
                                options=DownloadOptions(concurrency=4)), log=lambda s: None, executor=ex)
print(r.report.line(), flush=True)
"""


def test_ctrl_c_to_worker_processes_returns_their_partial_partitions(tmp_path: Path, demo_rows) -> None:
    """A terminal's Ctrl-C reaches the coordinator and its worker processes: each partition returns what it did."""
    import subprocess
    import sys
    out = tmp_path / "d"
    root = Path(__file__).resolve().parents[1]
    with serve_mirror(MirrorConfig.from_rows(demo_rows, latency=0.05)) as m:
        proc = subprocess.Popen([sys.executable, "-c", _WORKERS_RUN, m.url, str(out)], cwd=root, text=True,
                                env=dict(os.environ, PYTHONPATH=str(root)), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)  # its own group, as a terminal's job
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "images").is_dir() and len(list((out / "images").iterdir())) >= 30:
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    on_disk = [p for p in (out / "images").iterdir() if not p.name.startswith(".")]
    assert 30 <= len(on_disk) < 400
    # an image a worker stored in the instant of the interrupt may be on disk but not yet counted: it is
    # complete (written atomically) and the re-run counts it as already present; nothing is ever over-counted
    m = re.match(r"Interrupted: (\d+) downloaded, 0 failed", stdout)
    assert m, stdout
    assert int(m.group(1)) <= len(on_disk) <= int(m.group(1)) + 4, stdout
