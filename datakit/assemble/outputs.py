"""Finishing an assemble run: Caffe's lists, ``failed.csv``, the report, and the dead-list error.

``finish(plan, results)`` runs in the coordinator once the partitions are
done (or stopped). The lists hold the successful rows in the selected
(Caffe's) order, whatever order the partitions finished in; ``failed.csv``
always reflects this run, so the next run knows what not to ask for again,
its rows in the plan's order too (not the order downloads happened to end
in), so that one selection gives the same file on any executor.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datakit.assemble.planner import Plan
from datakit.atomic import write_text_atomic
from datakit.download.outcome import Kind, Stats
from datakit.download.partition import PartitionResult
from datakit.errors import DownloadError
from datakit.imagelist import write_list
from datakit.report import write_report

FINAL_MESSAGE = "Writing train/val for {} successfully downloaded images."


@dataclass
class AssembleReport:
    """The machine-readable account of a run (``--report``); ``to_json()`` keeps the keys of earlier versions."""

    manifest: str
    recipe: str
    seed: int
    images: int
    labels: int
    out: str
    mirror: str | None
    rewrite: str | None
    selected: int
    unique_files: int
    already_present: int
    attempted: int                   # jobs planned for this run
    downloaded: int
    succeeded: int                   # rows written to the lists
    failed: int
    failures: dict[str, int]
    skipped_permanent_failures: int
    nbytes: int
    http_attempts: int
    elapsed_s: float
    images_per_s: float | None
    stopped: str | None              # None, 'dead_list' or 'interrupted'
    lists: dict[str, str]
    failed_csv: str
    partitions: list[dict] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data, in the key order the report file has always had."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            out["bytes" if name == "nbytes" else name] = getattr(self, name)
        return out

    def __getitem__(self, key: str) -> Any:
        """``report["failures"]``: the JSON keys, for code written when the report was a dict."""
        return self.to_json()[key]

    def line(self) -> str:
        """The one-line summary the command prints at the end."""
        if self.stopped == "interrupted":
            skipped = (f", {self.skipped_permanent_failures} not asked again (failed for good last time)"
                       if self.skipped_permanent_failures else "")
            return (f"Interrupted: {self.downloaded} downloaded, {self.failed} failed, {self.already_present} "
                    f"already present{skipped} of {self.selected} selected; re-run the same command to resume "
                    "(finished images are kept).")
        failures = ", ".join(f"{k} {v}" for k, v in self.failures.items())
        return (f"{self.downloaded} downloaded, {self.already_present} already present, {self.failed} failed"
                + (f" ({failures}; see {self.failed_csv})" if failures else "")
                + f" in {self.elapsed_s:.1f} s"
                + (f"; {self.skipped_permanent_failures} not asked again (failed for good last time; "
                   "--retry-failed asks)" if self.skipped_permanent_failures else ""))


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
    report: AssembleReport | None = None


def write_failed_csv(path: Path, records: list[dict]) -> None:
    out = io.StringIO()
    w = csv.DictWriter(out, ["id", "name", "url", "reason", "detail"], lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow({k: rec.get(k, "") for k in w.fieldnames})
    write_text_atomic(path, out.getvalue())


LABEL_NAMES = "labels.txt"


def write_label_names(plan: Plan) -> Path | None:
    """``labels.txt`` beside the lists: the recipe's class names, one a line, for labels 0..K-1.

    K is ``--labels`` when given, else every name the recipe has; this is the file ``trainer
    classify --labels`` and the board read (Caffe's recipe shipped it as style_names.txt). A recipe
    without names, or with fewer names than the labels kept, gets none.
    """
    names = list(plan.recipe.label_names)
    k = plan.config.labels or len(names)
    if not names or k > len(names):
        return None
    path = plan.out / LABEL_NAMES
    write_text_atomic(path, "".join(f"{n}\n" for n in names[:k]))
    return path


def finish(plan: Plan, results: Sequence[PartitionResult], *, stopped: str | None = None,
           elapsed: float = 0.0) -> AssembleResult:
    """Write failed.csv, the lists (unless `stopped`) and the report; raise when the list looks dead.

    `results` may come in any order and may miss partitions that were
    cancelled. Raises DownloadError, after writing failed.csv and the report,
    when the run stopped on a dead list or when no selected image could be
    had at all (no lists are written then).
    """
    cfg = plan.config
    results = sorted(results, key=lambda r: r.index)
    stats = Stats()
    for r in results:
        stats.merge(r.stats)
    position = {job.key: i for i, job in enumerate(plan.jobs)}
    failures = sorted((o for r in results for o in r.failures), key=lambda o: position.get(o.job.key, -1))
    ok_names = set(plan.present).union(*(r.ok_names for r in results))

    records = [{"id": plan.row_id(o.job.key), "name": Path(o.job.dest).name if o.kind != Kind.BAD_NAME else "",
                "url": o.job.url, "reason": str(o.kind), "detail": o.detail} for o in plan.bad + failures]
    untried: list[dict] = []
    if stopped is not None:  # jobs a stopped run never reached keep last run's record, so nothing is forgotten
        reached = ok_names | {Path(o.job.dest).name for o in failures}
        untried = [plan.previous[j.dest.name] for j in plan.jobs
                   if j.dest.name not in reached and j.dest.name in plan.previous]
    write_failed_csv(plan.failed_csv, records + plan.carried + untried)

    lists: dict[str, Path] = {}
    succeeded = 0
    if stopped is None:
        by_split: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
        prefix = f"{plan.images_dir.resolve()}{os.sep}" if cfg.absolute_paths else "images/"
        for item in plan.items:
            if item.name in ok_names:
                by_split.setdefault(item.row.split or "train", []).append((prefix + item.name, item.row.label))
                succeeded += 1
        for split, entries in by_split.items() if succeeded else ():  # nothing at all: an error below, no lists
            lists[split] = plan.out / f"{split}.txt"
            write_list(lists[split], entries)
        if succeeded:
            write_label_names(plan)

    kinds = Counter({str(k): v for k, v in stats.kinds.items()})
    for o in plan.bad:
        kinds[str(o.kind)] += 1
    report = AssembleReport(
        manifest=str(plan.manifest_path), recipe=plan.recipe.name, seed=cfg.seed, images=cfg.images,
        labels=cfg.labels, out=str(plan.out), mirror=cfg.mirror, rewrite=cfg.rewrite, selected=len(plan.selected),
        unique_files=plan.unique_files, already_present=len(plan.present), attempted=plan.attempted,
        downloaded=stats.ok, succeeded=succeeded, failed=sum(v for k, v in kinds.items() if k != Kind.OK),
        failures={k: v for k, v in sorted(kinds.items()) if k != Kind.OK},
        skipped_permanent_failures=plan.skipped_for_good,
        nbytes=stats.nbytes, http_attempts=stats.attempts, elapsed_s=round(elapsed, 3),
        images_per_s=round(stats.ok / elapsed, 2) if elapsed > 0 else None, stopped=stopped,
        lists={k: str(v) for k, v in lists.items()}, failed_csv=str(plan.failed_csv),
        partitions=[{"partition": r.index, **r.stats.as_dict()} for r in results if r.finished])
    if cfg.report:
        write_report(cfg.report, report.to_json())
    result = AssembleResult(len(plan.selected), succeeded, len(plan.present), stats, lists, plan.failed_csv,
                            stopped, elapsed, report)
    if stopped == "dead_list" or (stopped is None and succeeded == 0):
        raise DownloadError(_dead_message(plan, stats, failures, stopped))
    return result


def _dead_message(plan: Plan, stats: Stats, failures: list, stopped: str | None) -> str:
    """The one line for a list that looks dead: the commonest kinds and what to try."""
    reasons = Counter(str(o.kind) for o in list(plan.bad) + failures)
    reasons.update(rec.get("reason", "") for rec in plan.carried)
    common = ", ".join(f"{k} x{v}" for k, v in reasons.most_common(2)) or "nothing left to attempt"
    # the rule this run already applied is no remedy
    rewrites = " or ".join(f"--rewrite {n}" for n in sorted(plan.recipe.rewrites) if n != plan.config.rewrite)
    hint = f"try {rewrites} (current host), or --mirror URL" if rewrites else "try --mirror URL or fix the URLs"
    if "connection" in common:
        hint = "no network here? " + hint
    what = (f"the first {stats.ok + stats.failed} downloads all failed" if stopped == "dead_list" else
            f"none of the {len(plan.selected)} selected images could be downloaded")
    return f"{what} ({common}): this URL list looks dead; {hint} (failures in {plan.failed_csv})"
