"""`datakit assemble` end to end against the mirror: Caffe's lists, reports, resume after SIGKILL, hostile URLs."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from datakit.assemble import AssembleConfig, assemble, name_from_url
from datakit.download import DownloadOptions
from datakit.errors import ConfigError, DownloadError, ListError
from datakit.imagelist import check_list
from datakit.manifest import open_manifest
from datakit.mirror import EXPECTED_REASON, PLACEHOLDER_PATH, MirrorConfig, fault_for, serve_mirror

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_rows():
    return open_manifest("demo")[1]


def _expected_lines(rows, images: int, seed: int, keep=lambda r: True) -> dict[str, list[str]]:
    """Caffe's selection recomputed independently, as list lines per split."""
    order = np.random.RandomState(seed).permutation(len(rows))[:images]
    out: dict[str, list[str]] = {"train": [], "test": []}
    for i in order:
        r = rows[i]
        if keep(r):
            out[r.split].append(f"images/{r.url.rsplit('/', 1)[-1]} {r.label}")
    return out


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _fast(**kw) -> DownloadOptions:
    base = dict(concurrency=16, retries=1, backoff=0.01, read_timeout=0.3, timeout=10, workers=2)
    base.update(kw)
    return DownloadOptions(**base)


def test_cli_assembles_the_demo_like_caffe(cli, tmp_path: Path, demo_rows) -> None:
    with serve_mirror(MirrorConfig.from_rows(demo_rows)) as m:
        r = cli("datakit", "assemble", "--manifest", "demo", "--mirror", m.url, "--out", str(tmp_path / "d"),
                "--images", "120", "--seed", "5", "--report", str(tmp_path / "r.json"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Writing train/val for 120 successfully downloaded images." in r.stdout.splitlines()
    want = _expected_lines(demo_rows, 120, 5)
    assert _lines(tmp_path / "d" / "train.txt") == want["train"]
    assert _lines(tmp_path / "d" / "test.txt") == want["test"]
    assert len(list((tmp_path / "d" / "images").iterdir())) == 120
    check = check_list(tmp_path / "d" / "train.txt", root=tmp_path / "d", check_files=True, allow_label_gaps=True)
    assert check.ok, check.problems
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["selected"] == report["downloaded"] == report["succeeded"] == 120 and report["failed"] == 0
    assert _lines(tmp_path / "d" / "failed.csv") == ["id,name,url,reason,detail"]
    assert _lines(tmp_path / "d" / "labels.txt") == ["Pastel", "Noir", "Sunny", "Hazy", "Texture"]  # for classify
    assert "img/s" not in r.stderr  # no progress bar when stderr is not a terminal
    with serve_mirror(MirrorConfig.from_rows(demo_rows)) as m:
        r = cli("datakit", "assemble", "--manifest", "demo", "--mirror", m.url, "--out", str(tmp_path / "d"),
                "--images", "130", "--seed", "5", "--progress", "-w", "-1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "10/10" in r.stderr and "img/s" in r.stderr  # forced bar: only the 10 new images were downloaded
    assert "(120 already present, 130 selected)" in r.stdout


def test_assemble_bar_on_a_terminal_only_unless_told_and_the_report_in_the_one_format(tmp_path: Path, demo_rows) -> None:
    from tests.pty_cli import assert_one_report_format, run_on_terminal
    args = ("datakit", "assemble", "--manifest", "demo", "--images", "40", "--seed", "3")
    with serve_mirror(MirrorConfig.from_rows(demo_rows)) as m:
        rc, out, term = run_on_terminal(*args, "--mirror", m.url, "--out", str(tmp_path / "a"),
                                        "--report", str(tmp_path / "r.json"), cwd=tmp_path)
        assert rc == 0, term
        assert "40/40" in term and "img/s" in term
        assert assert_one_report_format(tmp_path / "r.json")["succeeded"] == 40
        rc, out, term = run_on_terminal(*args, "--mirror", m.url, "--out", str(tmp_path / "b"), "--no-progress",
                                        cwd=tmp_path)
    assert rc == 0, term
    assert "img/s" not in term and "Writing train/val for 40 successfully downloaded images." in out


def test_faults_reach_the_report_failed_csv_and_reruns(tmp_path: Path, demo_rows) -> None:
    faults = {"not_found": 0.1, "server_error": 0.1, "placeholder": 0.1, "corrupt": 0.05, "flaky": 0.1}
    out = tmp_path / "d"
    cfg = AssembleConfig(manifest="demo", out=out, images=200, seed=2, report=tmp_path / "r.json",
                         options=_fast(), progress=False)
    picked = [demo_rows[i] for i in np.random.RandomState(2).permutation(len(demo_rows))[:200]]
    fault = {r.url.rsplit("/", 1)[-1]: fault_for(urlsplit(r.url).path, faults, 9) for r in picked}
    expected = Counter(EXPECTED_REASON[f] for f in fault.values() if f and EXPECTED_REASON[f] != "ok")
    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults=faults, seed=9)) as m:
        cfg.mirror = m.url
        result = assemble(cfg, log=lambda s: None)
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["failures"] == dict(expected)
        assert result.succeeded == 200 - sum(expected.values())
        with open(out / "failed.csv", newline="") as fh:
            failed = list(csv.DictReader(fh))
        assert Counter(rec["reason"] for rec in failed) == expected
        assert {rec["name"] for rec in failed} == {n for n, f in fault.items() if f and EXPECTED_REASON[f] != "ok"}
        listed = {line.split()[0][len("images/"):] for line in _lines(out / "train.txt") + _lines(out / "test.txt")}
        assert listed == {n for n, f in fault.items() if not f or EXPECTED_REASON[f] == "ok"}

        # a plain re-run asks again only for the transient failures (500s), never for finished files
        before = Counter(m.stats.hits)
        assemble(cfg, log=lambda s: None)
        asked = {p.rsplit("/", 1)[-1] for p in m.stats.hits if m.stats.hits[p] > before[p]}
        assert asked == {n for n, f in fault.items() if f == "server_error"}
        # --retry-failed asks for every failed row and nothing else
        before = Counter(m.stats.hits)
        cfg.retry_failed = True
        assemble(cfg, log=lambda s: None)
        asked = {p.rsplit("/", 1)[-1] for p in m.stats.hits if m.stats.hits[p] > before[p] and p != PLACEHOLDER_PATH}
        assert asked == {rec["name"] for rec in failed}
    # the lists are the same after both re-runs
    assert {line.split()[0][len("images/"):] for line in _lines(out / "train.txt") + _lines(out / "test.txt")} == listed


def _wait_for_files(folder: Path, count: int, proc: subprocess.Popen, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.is_dir() and sum(1 for p in folder.iterdir() if not p.name.startswith(".")) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} files appeared in {folder} (exit {proc.poll()})")


def _assemble_proc(out: Path, url: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "cli.datakit_main", "assemble", "--manifest", "demo", "--mirror",
                             url, "--out", str(out), "--images", "400", "--seed", "11", "--concurrency", "4",
                             "--no-progress", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_sigkill_then_rerun_loses_nothing_and_refetches_nothing(tmp_path: Path, demo_rows, cli) -> None:
    out = tmp_path / "d"
    with serve_mirror(MirrorConfig.from_rows(demo_rows, latency=0.02)) as m:
        proc = _assemble_proc(out, m.url)
        _wait_for_files(out / "images", 60, proc)
        proc.kill()
        proc.wait()
        finished = {p.name: p.stat().st_ino for p in (out / "images").iterdir() if not p.name.startswith(".")}
        assert 60 <= len(finished) < 400 and not (out / "train.txt").exists()
        hits_before = Counter(m.stats.hits)
        r = cli("datakit", "assemble", "--manifest", "demo", "--mirror", m.url, "--out", str(out), "--images", "400",
                "--seed", "11", "--no-progress")
        assert r.returncode == 0, r.stderr
        refetched = [p for p in m.stats.hits if m.stats.hits[p] > hits_before[p] and p.rsplit("/", 1)[-1] in finished]
        assert refetched == []
    assert f"({len(finished)} already present" in r.stdout
    for name, ino in finished.items():  # the very same files, untouched
        assert (out / "images" / name).stat().st_ino == ino
    assert not list((out / "images").glob(".*"))
    want = _expected_lines(demo_rows, 400, 11)
    assert _lines(out / "train.txt") == want["train"] and _lines(out / "test.txt") == want["test"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_with_a_summary_and_the_rerun_keeps_what_finished(tmp_path: Path, demo_rows, cli,
                                                                                   sig, code) -> None:
    """Ctrl-C prints the summary and exits 130. `kill PID` (a job scheduler) ended the run with no word
    (exit -15); it now stops as Ctrl-C does, exit 143. Either way the rerun keeps the finished images."""
    out = tmp_path / "d"
    with serve_mirror(MirrorConfig.from_rows(demo_rows, latency=0.05)) as m:
        proc = _assemble_proc(out, m.url)
        _wait_for_files(out / "images", 20, proc)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == code, stderr
        assert "Interrupted:" in stdout and "re-run the same command to resume" in stdout
        assert "Traceback" not in stderr and not (out / "train.txt").exists()
        finished = {p.name for p in (out / "images").iterdir() if not p.name.startswith(".")}
        r = cli("datakit", "assemble", "--manifest", "demo", "--mirror", m.url, "--out", str(out), "--images", "400",
                "--seed", "11", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"({len(finished)} already present" in r.stdout
    want = _expected_lines(demo_rows, 400, 11)
    assert _lines(out / "train.txt") == want["train"] and _lines(out / "test.txt") == want["test"]


HOSTILE = [
    "http://h/a/..%2F..%2Fevil1.jpg", "http://h/a/%2e%2e", "http://h/a/", "http://h/a/..", "http://h/a/%2Fetc%2Fevil2",
    "http://h/a/x%5C..%5Cevil3.jpg", "http://h/a/.hidden.jpg", "http://h/a/na%0Ame.jpg", "http://h/a/nul%00.jpg",
    "http://h/a/%2E%2E%2F%2E%2E%2Fevil4.jpg", "http://h/a/ok1.jpg", "http://h/b/ok%252F2.jpg",
]


def test_hostile_urls_never_write_outside_the_images_folder(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "image_url", "page_url", "label", "_split"])
        for i, url in enumerate(HOSTILE):
            w.writerow([i, url, "", 0, "train"])
    out = tmp_path / "work" / "out"
    with serve_mirror(MirrorConfig(any_path=True)) as m:
        result = assemble(AssembleConfig(manifest=str(manifest), out=out, options=_fast(), progress=False,
                                         mirror=m.url), log=lambda s: None)
    every = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    assert every == {"m.csv", "work", "work/out", "work/out/images", "work/out/images/ok1.jpg",
                     "work/out/images/ok%2F2.jpg", "work/out/train.txt", "work/out/test.txt", "work/out/failed.csv"}
    assert result.report["failures"] == {"bad_name": 10}
    assert sorted(_lines(out / "train.txt")) == ["images/ok%2F2.jpg 0", "images/ok1.jpg 0"]


@pytest.mark.parametrize("split", ["../../victim", "/tmp/abs", "..", ".hidden", "a/b", "a\\b", "labels"])
def test_a_split_that_is_not_a_plain_name_is_refused_and_nothing_is_written(cli, tmp_path: Path, split: str) -> None:
    """The split column names the list file (OUT/<split>.txt): a path there must not write outside the
    output folder (a tester's manifest overwrote ../../victim.txt), nor over labels.txt."""
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_url", "label", "_split"])
        w.writerows([["http://h/p0.jpg", 0, "train"], ["http://h/p1.jpg", 1, split]])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    with serve_mirror(MirrorConfig(any_path=True)) as m:
        r = cli("datakit", "assemble", "--manifest", str(manifest), "--mirror", m.url,
                "--out", str(tmp_path / "a" / "out"), "--no-progress")
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and f"m.csv:3: split {split!r}" in errors[0], r.stderr
    assert victim.read_text() == "precious\n" and not (tmp_path / "a").exists()


def test_splits_other_than_train_and_test_get_their_own_list(tmp_path: Path) -> None:
    """A plain split name such as val is kept (Caffe's recipes use train and test; users add others)."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_url,label,_split\nhttp://h/p0.jpg,0,train\nhttp://h/p1.jpg,1,val\n")
    with serve_mirror(MirrorConfig(any_path=True)) as m:
        result = assemble(AssembleConfig(manifest=str(manifest), out=tmp_path / "out", options=_fast(),
                                         progress=False, mirror=m.url), log=lambda s: None)
    assert sorted(result.report["lists"]) == ["test", "train", "val"]
    assert _lines(tmp_path / "out" / "val.txt") == ["images/p1.jpg 1"]


@pytest.mark.parametrize("url", ["http://h/a/..", "http://h/%2e%2E", "http://h/x%2Fy", "http://h/", "http://h/.x",
                                 "http://h/a%5Cb", "http://h/a%0d"])
def test_name_from_url_refuses(url: str) -> None:
    with pytest.raises(ListError):
        name_from_url(url)


def test_dead_list_stops_early_with_one_line(cli, tmp_path: Path, demo_rows) -> None:
    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults={"not_found": 1.0})) as m:
        r = cli("datakit", "assemble", "--manifest", "demo", "--mirror", m.url, "--out", str(tmp_path / "d"),
                "--images", "1000", "--dead-after", "40", "--concurrency", "8", "--no-progress")
        asked = sum(m.stats.hits.values())
    assert r.returncode == 1
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 1 and "looks dead" in errors[0] and "--rewrite flickr" in errors[0] and "--mirror" in errors[0]
    assert 40 <= asked <= 48  # stopped after 40 failures (plus those already in flight), not 1000
    assert not (tmp_path / "d" / "train.txt").exists()
    assert len(_lines(tmp_path / "d" / "failed.csv")) - 1 >= 40


def test_a_small_run_where_every_download_fails_is_an_error_not_empty_lists(cli, tmp_path: Path, demo_rows) -> None:
    """Fewer rows than --dead-after, all failing: exit 1 with the dead-list line, and no empty lists left."""
    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults={"not_found": 1.0})) as m:
        r = cli("datakit", "assemble", "--manifest", "demo", "--mirror", m.url, "--out", str(tmp_path / "d"),
                "--images", "12", "--concurrency", "4", "--no-progress")
    assert r.returncode == 1
    [error] = r.stderr.strip().splitlines()
    assert "none of the 12 selected images could be downloaded (http_404 x12)" in error and "--mirror" in error
    assert not (tmp_path / "d" / "train.txt").exists() and not (tmp_path / "d" / "test.txt").exists()
    assert len(_lines(tmp_path / "d" / "failed.csv")) - 1 == 12


def test_absolute_paths_resize_and_option_errors(tmp_path: Path, demo_rows) -> None:
    out = tmp_path / "d"
    with serve_mirror(MirrorConfig.from_rows(demo_rows)) as m:
        cfg = AssembleConfig(manifest="demo", out=out, images=20, seed=1, mirror=m.url, absolute_paths=True,
                             options=_fast(resize=48), progress=False)
        assemble(cfg, log=lambda s: None)
        with pytest.raises(ConfigError, match="no such rule"):
            assemble(AssembleConfig(manifest="demo", out=out, rewrite="nope", mirror=m.url), log=lambda s: None)
        with pytest.raises(ConfigError, match="--images 0"):
            assemble(AssembleConfig(manifest="demo", out=out, images=0), log=lambda s: None)
        with pytest.raises(ConfigError, match="--labels -1: expected a positive count"):  # it meant 'all'
            assemble(AssembleConfig(manifest="demo", out=out, images=20, labels=-1), log=lambda s: None)
    lines = _lines(out / "train.txt") + _lines(out / "test.txt")
    assert len(lines) == 20 and all(line.startswith(str(out.resolve() / "images") + "/") for line in lines)
    import cv2
    shapes = {min(cv2.imread(line.rsplit(" ", 1)[0]).shape[:2]) for line in lines}
    assert shapes == {48}  # the shorter side was brought down to 48


def test_dead_list_library_error_names_the_kind(tmp_path: Path, demo_rows) -> None:
    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults={"gone": 1.0})) as m:
        with pytest.raises(DownloadError, match=r"http_410 x\d+"):
            assemble(AssembleConfig(manifest="demo", out=tmp_path, images=60, dead_after=10, mirror=m.url,
                                    options=_fast(concurrency=2), progress=False), log=lambda s: None)


def test_dead_list_hint_does_not_suggest_the_rewrite_already_applied(tmp_path: Path, demo_rows) -> None:
    with serve_mirror(MirrorConfig.from_rows(demo_rows, faults={"not_found": 1.0})) as m:
        with pytest.raises(DownloadError, match="looks dead") as err:
            assemble(AssembleConfig(manifest="demo", out=tmp_path, images=12, rewrite="flickr", mirror=m.url,
                                    options=_fast(concurrency=2), progress=False), log=lambda s: None)
    message = str(err.value)
    assert "--rewrite flickr" not in message and "--mirror" in message


def test_real_flickr_csv_through_the_mirror_gives_caffes_lists(tmp_path: Path, shared_data: Path) -> None:
    """The real Flickr Style CSV (recognised by its sha256 as the flickr_style recipe), served by the mirror."""
    csv_path = shared_data / "flickr_style" / "flickr_style.csv.gz"
    recipe, rows, _ = open_manifest(str(csv_path))
    assert recipe.name == "flickr_style" and "flickr" in recipe.rewrites
    out = tmp_path / "fs"
    with serve_mirror(MirrorConfig.from_rows(rows, num_labels=20)) as m:
        result = assemble(AssembleConfig(manifest=str(csv_path), out=out, images=60, seed=831486, labels=10,
                                         rewrite="flickr", mirror=m.url, options=_fast(), progress=False),
                          log=lambda s: None)
    assert result.succeeded == 60
    order = np.random.RandomState(831486).permutation(len(rows))
    picked = [rows[i] for i in order if rows[i].label < 10][:60]
    for split in ("train", "test"):
        assert _lines(out / f"{split}.txt") == [f"images/{r.url.rsplit('/', 1)[-1]} {r.label}"
                                                 for r in picked if r.split == split]
    # --labels 10: the names of labels 0..9, in Caffe's style_names.txt order
    assert _lines(out / "labels.txt") == ["Detailed", "Pastel", "Melancholy", "Noir", "HDR", "Vintage",
                                          "Long Exposure", "Horror", "Sunny", "Bright"]


def test_a_rerun_says_how_many_rows_it_skips_as_failed_for_good_as_its_summary_does(tmp_path: Path, demo_rows) -> None:
    """The rerun's first line and its Interrupted line left out the rows not asked again (a 404 or
    placeholder last time), so their numbers did not add up to the selection; the summary counted them."""
    faults = {"not_found": 0.15, "placeholder": 0.1}
    out = tmp_path / "d"
    cfg = AssembleConfig(manifest="demo", out=out, images=300, seed=11, options=_fast(), progress=False,
                         report=tmp_path / "r.json")
    mirror = MirrorConfig.from_rows(demo_rows, faults=faults, seed=4)
    with serve_mirror(mirror) as m:  # one server: a row's record is skipped only for the same URL
        cfg.mirror = m.url
        first = assemble(cfg, log=lambda s: None).report
        for_good = first.failed
        assert for_good > 20 and first.skipped_permanent_failures == 0
        kept = sorted((out / "images").iterdir())[:50]  # most images lost (a partial copy of the folder)
        for p in set((out / "images").iterdir()) - set(kept):
            p.unlink()
        heard: list[str] = []
        again = assemble(cfg, log=heard.append).report
        assert again.skipped_permanent_failures == for_good and again.already_present == 50
        assert heard[0] == (f"Downloading {300 - 50 - for_good} images (50 already present, {for_good} not asked "
                            "again (failed for good last time; --retry-failed asks), 300 selected) with 16 connections...")
        assert again.line().endswith(f"; {for_good} not asked again (failed for good last time; --retry-failed asks)")

        for p in sorted((out / "images").iterdir())[50:]:  # lose them again, and stop the next rerun midway
            p.unlink()
        mirror.latency = 0.05
        proc = subprocess.Popen([sys.executable, "-m", "cli.datakit_main", "assemble", "--manifest", "demo", "--mirror",
                                 m.url, "--out", str(out), "--images", "300", "--seed", "11", "--concurrency", "4",
                                 "--no-progress"], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_files(out / "images", 70, proc)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    start, *_, last = stdout.splitlines()
    assert start.startswith(f"Downloading {300 - 50 - for_good} images (50 already present, {for_good} not asked again")
    counts = re.match(rf"Interrupted: (\d+) downloaded, 0 failed, 50 already present, {for_good} not asked again "
                      r"\(failed for good last time\) of 300 selected; re-run the same command to resume", last)
    assert counts, last
    assert 20 <= int(counts.group(1)) < 300 - 50 - for_good
