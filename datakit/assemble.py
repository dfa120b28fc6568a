"""`datakit assemble`: from a manifest to ``images/`` + ``train.txt`` / ``test.txt``, as Caffe's assemble_data.py.

The steps, each in its own function so they can be tested and reused:
resolve the manifest (recipe name or CSV path) -> Caffe's seeded subset ->
the file name of each row (from its URL, refusing anything that could
escape ``OUT/images``) -> what is already on disk -> download the rest over
partitions -> write the lists (selected order, successful rows only), the
``failed.csv`` and the JSON report.

A re-run with the same options downloads only what is missing; rows that
failed for good last time (404, placeholder, ...) are not asked for again
unless ``--retry-failed``. When the first attempts of a run all fail, it stops
early and says the list looks dead, instead of grinding through 80,000
timeouts.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from datakit.atomic import write_text_atomic
from datakit.download import PERMANENT_KINDS, Downloader, DownloadOptions, Job, Outcome, Stats
from datakit.errors import ConfigError, DownloadError, ListError
from datakit.imagelist import safe_join, write_list
from datakit.images import read_header, sniff_format
from datakit.manifest import Recipe, Row, apply_rewrites, mirror_url, open_manifest, partitions, select_rows

FINAL_MESSAGE = "Writing train/val for {} successfully downloaded images."
FAILED_CSV = "failed.csv"


@dataclass
class AssembleConfig:
    """Everything `datakit assemble` was asked to do."""

    manifest: str = "flickr_style"
    out: Path = Path("data/flickr_style")
    images: int = -1
    seed: int = 0
    labels: int = 0
    mirror: str | None = None
    rewrite: str | None = None
    absolute_paths: bool = False
    report: Path | None = None
    retry_failed: bool = False
    dead_after: int = 300
    partition_size: int = 1000
    url_column: str | None = None
    label_column: str | None = None
    split_column: str | None = None
    cache_dir: Path | None = None
    progress: bool | None = None       # None: when stderr is a terminal
    options: DownloadOptions = field(default_factory=DownloadOptions)


@dataclass
class Item:
    """A selected row with the file it becomes and the URL actually requested."""

    row: Row
    name: str
    url: str


@dataclass
class AssembleResult:
    selected: int
    succeeded: int                  # rows written to the lists
    present: int                    # unique files already on disk before this run
    stats: Stats                    # this run's downloads
    lists: dict[str, Path]
    failed_csv: Path
    stopped: str | None = None      # None, 'dead_list' or 'interrupted'
    elapsed: float = 0.0
    report: dict = field(default_factory=dict)


def name_from_url(url: str) -> str:
    """The file name Caffe would use (last URL path component), refused when unsafe.

    Percent-decoding happens first, so '%2e%2e' or '%2F' cannot smuggle a
    '..' or a separator past the check. Names starting with '.' are refused
    too (they would hide, and could collide with our temporary files).
    """
    path = urlsplit(url).path
    name = unquote(path.rsplit("/", 1)[-1])
    bad = (not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name
           or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name.encode("utf-8", "replace")) > 255)
    if bad:
        raise ListError(f"URL {url!r}: its last path component {name!r} is not a safe file name")
    return name


def image_path(images_dir: Path, name: str) -> Path:
    """`images_dir / name`, proven to stay directly inside `images_dir`.

    `name` has passed `name_from_url`; the normalised join must still have
    `images_dir` as its parent (belt and braces against any name the checks
    above let through). Files are renamed into place, and a rename replaces a
    symlink rather than following it, so a planted link cannot redirect a write.
    """
    dest = safe_join(images_dir, name)
    if os.path.dirname(os.path.normpath(dest)) != os.path.normpath(images_dir):
        raise ListError(f"file name {name!r} would land outside {images_dir}")
    return dest


def looks_complete(path: Path) -> bool:
    """A quick check that a file on disk is a whole image (header parses, JPEG/PNG end marker present).

    Files are only ever renamed into place after a full decode, so this
    catches files that someone else left there cut short, without decoding
    tens of thousands of images on every re-run.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            return False
        with open(path, "rb") as fh:
            head = fh.read(65536)
            fh.seek(max(0, size - 16))
            tail = fh.read()
        fmt = sniff_format(head)
        if fmt is None:
            return False
        read_header(head)
        if fmt == "jpeg":
            return tail.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")
        if fmt == "png":
            return b"IEND" in tail
        return True
    except (OSError, ValueError, Exception):
        return False


def resolve_manifest(cfg: AssembleConfig) -> tuple[Recipe, list[Row], Path]:
    """Read the manifest `cfg.manifest` names: a CSV path, or a recipe name / recipe .json."""
    return open_manifest(cfg.manifest, cfg.cache_dir, url_column=cfg.url_column, label_column=cfg.label_column,
                         split_column=cfg.split_column)


def plan_items(rows: list[Row], recipe: Recipe, cfg: AssembleConfig) -> tuple[list[Item], list[Outcome]]:
    """Name each selected row's file and choose the URL to request; unsafe names become failures."""
    rules = []
    if cfg.rewrite:
        if cfg.rewrite not in recipe.rewrites:
            known = ", ".join(sorted(recipe.rewrites)) or "none"
            raise ConfigError(f"--rewrite {cfg.rewrite!r}: manifest {recipe.name!r} has no such rule (has: {known})")
        rules = recipe.rewrites[cfg.rewrite]
    images_dir = Path(cfg.out) / "images"
    items: list[Item] = []
    bad: list[Outcome] = []
    owner: dict[str, str] = {}
    for row in rows:
        url = apply_rewrites(row.url, rules)
        if cfg.mirror:
            url = mirror_url(url, cfg.mirror)
        try:
            name = name_from_url(row.url)
            dest = image_path(images_dir, name)
        except ListError as err:
            bad.append(Outcome(Job(row.position, url, images_dir), "bad_name", str(err)))
            continue
        if owner.setdefault(name, row.url) != row.url:
            bad.append(Outcome(Job(row.position, url, dest), "duplicate_name",
                               f"{name!r} is also the name of {owner[name]}"))
            continue
        items.append(Item(row, name, url))
    return items, bad


def read_failed_csv(path: Path) -> dict[str, dict]:
    """The previous run's failures, keyed by file name."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as fh:
        return {rec["name"]: rec for rec in csv.DictReader(fh) if rec.get("name")}


def write_failed_csv(path: Path, records: list[dict]) -> None:
    out = io.StringIO()
    w = csv.DictWriter(out, ["id", "name", "url", "reason", "detail"], lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow({k: rec.get(k, "") for k in w.fieldnames})
    write_text_atomic(path, out.getvalue())


def _clean_temporaries(images_dir: Path) -> int:
    """Remove temporary files a killed run left behind (they never carry a final name)."""
    removed = 0
    if images_dir.is_dir():
        for p in images_dir.glob(".*.part"):
            try:
                p.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def _progress_bar(total: int, enabled: bool | None):
    from tqdm import tqdm
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, unit="img", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def assemble(cfg: AssembleConfig, log: Callable[[str], None] = print) -> AssembleResult:
    """Run the whole assemble stage; see the module docstring."""
    started = time.perf_counter()
    out = Path(cfg.out)
    images_dir = out / "images"
    if cfg.images == 0 or cfg.images < -1:
        raise ConfigError(f"--images {cfg.images}: expected a positive count, or -1 for all rows")
    recipe, rows, manifest_path = resolve_manifest(cfg)
    if not rows:
        raise ListError(f"{manifest_path}: manifest has no rows")
    if recipe.placeholder_sha1:
        cfg.options.placeholder_sha1 = frozenset(cfg.options.placeholder_sha1) | set(recipe.placeholder_sha1)
    selected = select_rows(rows, images=cfg.images, seed=cfg.seed, num_labels=cfg.labels)
    items, bad = plan_items(selected, recipe, cfg)
    images_dir.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(images_dir)

    failed_path = out / FAILED_CSV
    previous = read_failed_csv(failed_path)
    present: set[str] = set()
    carried: list[dict] = []
    jobs: list[Job] = []
    unique: dict[str, Item] = {}
    for item in items:
        unique.setdefault(item.name, item)
    for pidx, part in partitions(list(unique.values()), cfg.partition_size):
        for item in part:
            dest = images_dir / item.name
            if dest.is_file() and looks_complete(dest):
                present.add(item.name)
                continue
            prev = previous.get(item.name)
            if cfg.retry_failed:
                if prev is None:
                    continue  # only last run's failures are attempted
            elif prev is not None and prev.get("reason") in PERMANENT_KINDS and prev.get("url") == item.url:
                carried.append(prev)
                continue
            jobs.append(Job(item.row.position, item.url, dest, pidx))
    if cfg.retry_failed:
        # rows neither present nor in failed.csv stay as they were: keep their failure records
        carried = [rec for name, rec in previous.items() if name not in unique]

    log(f"Downloading {len(jobs)} images ({len(present)} already present, {len(selected)} selected) "
        f"with {cfg.options.concurrency} connections...")
    stats, per_part, failures, done = _download(jobs, cfg)
    stopped = done.stopped
    ok_names = present | done.ok_names

    failure_records = [{"id": rows[o.job.key].id if 0 <= o.job.key < len(rows) else "", "name": Path(o.job.dest).name
                        if o.kind != "bad_name" else "", "url": o.job.url, "reason": o.kind, "detail": o.detail}
                       for o in bad + failures] + carried
    write_failed_csv(failed_path, failure_records)

    lists: dict[str, Path] = {}
    succeeded = 0
    if stopped is None:
        by_split: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
        prefix = f"{images_dir.resolve()}{os.sep}" if cfg.absolute_paths else "images/"
        for item in items:
            if item.name not in ok_names:
                continue
            path = prefix + item.name
            by_split.setdefault(item.row.split or "train", []).append((path, item.row.label))
            succeeded += 1
        for split, entries in by_split.items() if succeeded else ():  # nothing at all: an error below, no lists
            lists[split] = out / f"{split}.txt"
            write_list(lists[split], entries)

    elapsed = time.perf_counter() - started
    kinds = Counter(stats.kinds)
    for o in bad:
        kinds[o.kind] += 1
    report = {
        "manifest": str(manifest_path), "recipe": recipe.name, "seed": cfg.seed, "images": cfg.images,
        "labels": cfg.labels, "out": str(out), "mirror": cfg.mirror, "rewrite": cfg.rewrite,
        "selected": len(selected), "unique_files": len(unique), "already_present": len(present),
        "attempted": len(jobs), "downloaded": stats.ok, "succeeded": succeeded,
        "failed": sum(v for k, v in kinds.items() if k != "ok"),
        "failures": {k: v for k, v in sorted(kinds.items()) if k != "ok"},
        "skipped_permanent_failures": len(carried) if not cfg.retry_failed else 0,
        "bytes": stats.nbytes, "http_attempts": stats.attempts,
        "elapsed_s": round(elapsed, 3), "images_per_s": round(stats.ok / elapsed, 2) if elapsed > 0 else None,
        "stopped": stopped, "lists": {k: str(v) for k, v in lists.items()}, "failed_csv": str(failed_path),
        "partitions": [{"partition": p, **s.as_dict()} for p, s in sorted(per_part.items())],
    }
    if cfg.report:
        write_text_atomic(cfg.report, json.dumps(report, indent=2) + "\n")
    result = AssembleResult(len(selected), succeeded, len(present), stats, lists, failed_path, stopped, elapsed,
                            report)
    if stopped == "dead_list" or (stopped is None and succeeded == 0 and failures):
        common = ", ".join(f"{k} x{v}" for k, v in Counter(o.kind for o in failures).most_common(2))
        rewrites = " or ".join(f"--rewrite {n}" for n in sorted(recipe.rewrites))
        hint = f"try {rewrites} (current host), or --mirror URL" if rewrites else "try --mirror URL or fix the URLs"
        if "connection" in common:
            hint = "no network here? " + hint
        what = (f"the first {stats.ok + stats.failed} downloads all failed" if stopped == "dead_list" else
                f"none of the {len(selected)} selected images could be downloaded")
        raise DownloadError(f"{what} ({common}): this URL list looks dead; {hint} (failures in {failed_path})")
    if stopped is None:
        log(FINAL_MESSAGE.format(succeeded))
    return result


@dataclass
class _RunState:
    stopped: str | None = None
    attempted: int = 0
    ok_names: set[str] = field(default_factory=set)


def _download(jobs: list[Job], cfg: AssembleConfig) -> tuple[Stats, dict[int, Stats], list[Outcome], _RunState]:
    """Run the downloader with a progress bar, per-partition stats, dead-list and Ctrl-C handling."""
    per_part: dict[int, Stats] = {}
    failures: list[Outcome] = []
    state = _RunState()
    bar = _progress_bar(len(jobs), cfg.progress)

    def on_outcome(outcome: Outcome) -> bool:
        per_part.setdefault(outcome.job.partition, Stats()).add(outcome)
        state.attempted += 1
        if outcome.ok:
            state.ok_names.add(outcome.job.dest.name)
        else:
            failures.append(outcome)
        bar.update(1)
        if state.attempted % 50 == 0:
            bar.set_postfix_str(f"failed {len(failures)}", refresh=False)
        if (cfg.dead_after > 0 and not state.ok_names and state.attempted >= cfg.dead_after
                and len(jobs) > state.attempted):
            state.stopped = "dead_list"
            return True
        return False

    async def main() -> Stats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = False
        if threading.current_thread() is threading.main_thread():
            def interrupted() -> None:
                state.stopped = "interrupted"
                stop.set()
            try:
                loop.add_signal_handler(signal.SIGINT, interrupted)
                installed = True
            except (NotImplementedError, RuntimeError):
                pass
        try:
            return await Downloader(cfg.options).run(jobs, on_outcome, stop)
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)

    try:
        stats = asyncio.run(main()) if jobs else Stats()
    finally:
        bar.close()
    return stats, per_part, failures, state
