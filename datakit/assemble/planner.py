"""Planning an assemble run: which rows, which file names, what is already done, and the partitions left.

``plan(cfg)`` reads and decides; it writes nothing, so a bad manifest, an
empty selection or an unknown rewrite fails before the output folder exists.
Resolve the manifest (recipe name or CSV path) -> Caffe's seeded subset ->
the file name of each row (from its URL, refusing anything that could escape
``OUT/images``) -> what is on disk and what failed for good last time ->
the jobs left, split into partitions.

Partitions and the dead-list stop: a run stops early when its first
``dead_after`` attempts all fail. So that a coordinator can decide that from
whole partitions on an executor that runs them elsewhere (a worker process
or a cluster cannot stream single outcomes back), the first ``dead_after``
jobs are cut into partitions that end exactly there (``Partition.probe``);
the coordinator runs those one at a time and, when all of them failed,
cancels the rest without starting them. Later partitions are
``partition_size`` jobs each and may run at once. (In this process the
coordinator fuses them into one stream instead; see ``coordinator``.)
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from datakit.assemble.config import AssembleConfig
from datakit.download.options import DownloadOptions
from datakit.download.outcome import PERMANENT_KINDS, FetchJob, Kind, Outcome
from datakit.errors import ConfigError, ImageError, ListError
from datakit.imagelist import safe_join
from datakit.manifest import Recipe, Row, apply_rewrites, mirror_url, open_manifest, select_rows

FAILED_CSV = "failed.csv"


@dataclass
class PlannedRow:
    """A selected row with the file it becomes and the URL actually requested."""

    row: Row
    name: str
    url: str


Item = PlannedRow  # the name this type had before


@dataclass
class Partition:
    """Consecutive jobs run together by one executor task; `probe` ones count toward the dead-list stop."""

    index: int
    jobs: list[FetchJob]
    probe: bool = False


@dataclass
class Plan:
    """What an assemble run will do; see the module docstring."""

    config: AssembleConfig
    recipe: Recipe
    manifest_path: Path
    rows: list[Row]                  # every manifest row (failure records name the row's id)
    selected: list[Row]              # Caffe's subset, in Caffe's order
    items: list[PlannedRow]          # selected rows with a safe name, in Caffe's order
    bad: list[Outcome]               # rows refused before any request (unsafe or duplicate names)
    unique_files: int
    present: set[str]                # names already on disk and whole
    carried: list[dict]              # failure records kept from the last failed.csv
    previous: dict[str, dict]        # the last failed.csv, by name (kept for jobs a stopped run never tried)
    partitions: list[Partition]
    options: DownloadOptions         # the config's, plus the recipe's placeholder hashes

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def images_dir(self) -> Path:
        return self.out / "images"

    @property
    def failed_csv(self) -> Path:
        return self.out / FAILED_CSV

    @property
    def jobs(self) -> list[FetchJob]:
        return [job for part in self.partitions for job in part.jobs]

    @property
    def attempted(self) -> int:
        return sum(len(part.jobs) for part in self.partitions)

    @property
    def skipped_for_good(self) -> int:
        """Rows not asked for again because they failed for good last time (0 with --retry-failed,
        where `carried` holds the records of rows outside this selection instead)."""
        return 0 if self.config.retry_failed else len(self.carried)

    def row_id(self, key: int) -> str:
        return self.rows[key].id if 0 <= key < len(self.rows) else ""


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
    from datakit.images import read_header, sniff_format  # noqa: PLC0415 - OpenCV only when there is a file

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
    except (OSError, ImageError):  # unreadable, or a header cut short: fetch it again
        return False


def resolve_manifest(cfg: AssembleConfig) -> tuple[Recipe, list[Row], Path]:
    """Read the manifest `cfg.manifest` names: a CSV path, or a recipe name / recipe .json."""
    return open_manifest(cfg.manifest, cfg.cache_dir, url_column=cfg.url_column, label_column=cfg.label_column,
                         split_column=cfg.split_column)


def plan_items(rows: list[Row], recipe: Recipe, cfg: AssembleConfig) -> tuple[list[PlannedRow], list[Outcome]]:
    """Name each selected row's file and choose the URL to request; unsafe names become failures."""
    rules = []
    if cfg.rewrite:
        if cfg.rewrite not in recipe.rewrites:
            known = ", ".join(sorted(recipe.rewrites)) or "none"
            raise ConfigError(f"--rewrite {cfg.rewrite!r}: manifest {recipe.name!r} has no such rule (has: {known})")
        rules = recipe.rewrites[cfg.rewrite]
    images_dir = Path(cfg.out) / "images"
    items: list[PlannedRow] = []
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
            bad.append(Outcome(FetchJob(row.position, url, images_dir), Kind.BAD_NAME, str(err)))
            continue
        if owner.setdefault(name, row.url) != row.url:
            bad.append(Outcome(FetchJob(row.position, url, dest), Kind.DUPLICATE_NAME,
                               f"{name!r} is also the name of {owner[name]}"))
            continue
        items.append(PlannedRow(row, name, url))
    return items, bad


def read_failed_csv(path: Path) -> dict[str, dict]:
    """The previous run's failures, keyed by file name."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as fh:
        return {rec["name"]: rec for rec in csv.DictReader(fh) if rec.get("name")}


def split_jobs(jobs: list[FetchJob], size: int, probe: int) -> list[Partition]:
    """Consecutive partitions of at most `size` jobs, the first ones ending exactly at `probe` jobs.

    Each job is tagged with its partition's index (per-partition stats).
    """
    size = max(1, int(size))
    probe = max(0, min(probe, len(jobs)))
    bounds: list[tuple[int, int, bool]] = []
    start = 0
    for stop_at, is_probe in ((probe, True), (len(jobs), False)):
        while start < stop_at:
            end = min(start + size, stop_at)
            bounds.append((start, end, is_probe))
            start = end
    return [Partition(i, [FetchJob(j.key, j.url, j.dest, i) for j in jobs[a:b]], is_probe)
            for i, (a, b, is_probe) in enumerate(bounds)]


def plan(cfg: AssembleConfig) -> Plan:
    """Decide everything an assemble run does, reading but never writing; see the module docstring.

    Raises ConfigError for bad options and ListError for a manifest or a
    selection with no rows (one line naming the manifest).
    """
    cfg.validate()
    recipe, rows, manifest_path = resolve_manifest(cfg)
    if not rows:
        raise ListError(f"{manifest_path}: manifest has no rows")
    selected = select_rows(rows, images=cfg.images, seed=cfg.seed, num_labels=cfg.labels)
    if not selected:
        raise ListError(f"{manifest_path}: no row has a label below --labels {cfg.labels} "
                        f"({len(rows)} rows, labels {min(r.label for r in rows)}..{max(r.label for r in rows)}); "
                        "nothing to assemble")
    items, bad = plan_items(selected, recipe, cfg)
    images_dir = Path(cfg.out) / "images"
    previous = read_failed_csv(Path(cfg.out) / FAILED_CSV)
    present: set[str] = set()
    carried: list[dict] = []
    jobs: list[FetchJob] = []
    unique: dict[str, PlannedRow] = {}
    for item in items:
        unique.setdefault(item.name, item)
    for item in unique.values():
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
        jobs.append(FetchJob(item.row.position, item.url, dest))
    if cfg.retry_failed:
        # rows neither present nor in failed.csv stay as they were: keep their failure records
        carried = [rec for name, rec in previous.items() if name not in unique]
    partitions = split_jobs(jobs, cfg.partition_size, cfg.dead_after if cfg.dead_after > 0 else 0)
    return Plan(cfg, recipe, manifest_path, rows, selected, items, bad, len(unique), present, carried, previous,
                partitions, cfg.options.with_placeholders(recipe.placeholder_sha1))
