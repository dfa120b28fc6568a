"""`datakit assemble`: from a manifest to ``images/`` + ``train.txt`` / ``test.txt``, as Caffe's assemble_data.py.

Three steps, so that the middle one can run anywhere an executor reaches:

1. ``plan(cfg) -> Plan`` (``planner.py``): the recipe, Caffe's seeded subset,
   each row's file name, what a previous run finished or failed for good,
   and the jobs left, split into partitions. Reads, never writes.
2. ``run_partition(jobs, options) -> PartitionResult``
   (``datakit.download.partition``): downloads one partition on its own
   event loop; a picklable module-level function of plain data. The
   coordinator (``coordinator.py``) runs the partitions on an ``Executor``
   (``datakit.parallel``; the default runs them in this process, fused into
   one stream) and owns the dead-list stop and Ctrl-C, cancelling what is left.
3. ``finish(plan, results) -> AssembleResult`` (``outputs.py``): the lists in
   Caffe's order, ``failed.csv`` and the ``AssembleReport``.

A re-run with the same options downloads only what is missing; rows that
failed for good last time (404, placeholder, ...) are not asked for again
unless ``--retry-failed``. When the first attempts of a run all fail, it stops
early and says the list looks dead, instead of grinding through 80,000
timeouts.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datakit.assemble.config import AssembleConfig

if TYPE_CHECKING:
    from datakit.assemble.outputs import AssembleResult
    from datakit.assemble.planner import Plan
    from datakit.parallel import Executor

# Importing the package is cheap (PEP 562): the planner, the coordinator and the downloader behind
# them (aiohttp, OpenCV) load on first use, so a command can build its parser from AssembleConfig alone.
_WHERE = {
    "RunRecord": "coordinator", "run_partitions": "coordinator",
    "FINAL_MESSAGE": "outputs", "AssembleReport": "outputs", "AssembleResult": "outputs", "finish": "outputs",
    "write_failed_csv": "outputs",
    "FAILED_CSV": "planner", "Item": "planner", "Partition": "planner", "Plan": "planner", "PlannedRow": "planner",
    "image_path": "planner", "looks_complete": "planner", "name_from_url": "planner", "plan": "planner",
    "plan_items": "planner", "read_failed_csv": "planner", "resolve_manifest": "planner", "split_jobs": "planner",
}
_DOWNLOAD = {"PartitionResult", "run_partition"}


def __getattr__(name: str) -> Any:
    if name in _DOWNLOAD:
        value = getattr(importlib.import_module("datakit.download.partition"), name)
    elif name in _WHERE:
        value = getattr(importlib.import_module(f"datakit.assemble.{_WHERE[name]}"), name)
    else:
        raise AttributeError(f"module 'datakit.assemble' has no attribute {name!r}")
    globals()[name] = value
    return value


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


def _progress_bar(total: int, enabled: bool | None) -> Any:
    """The run's bar, under the one policy of ``datakit.report.progress_bar`` (None: only on a terminal)."""
    from datakit.report import progress_bar  # noqa: PLC0415 - tqdm only when a bar is drawn
    return progress_bar(total, enabled, unit="img", smoothing=0.1, dynamic_ncols=True)


def start_line(plan: Plan) -> str:
    """The line a run starts with: what it asks for and what it does not, counted as the summary
    counts them (a rerun that skips rows which failed for good last time says how many)."""
    skipped = plan.skipped_for_good
    refused = len(plan.bad)
    return (f"Downloading {plan.attempted} images ({len(plan.present)} already present, "
            + (f"{skipped} not asked again (failed for good last time; --retry-failed asks), " if skipped else "")
            + (f"{refused} refused (unsafe or duplicate file names), " if refused else "")
            + f"{len(plan.selected)} selected) with {plan.config.options.concurrency} connections...")


def assemble(cfg: AssembleConfig, log: Callable[[str], None] = print,
             executor: Executor | None = None) -> AssembleResult:
    """Plan, run every partition on `executor` (default: in this process), finish; see the module docstring."""
    from datakit.assemble.coordinator import run_partitions  # noqa: PLC0415 - see _WHERE
    from datakit.assemble.outputs import FINAL_MESSAGE, finish  # noqa: PLC0415
    from datakit.assemble.planner import plan  # noqa: PLC0415
    from datakit.download.outcome import Outcome  # noqa: PLC0415
    from datakit.download.partition import PartitionResult  # noqa: PLC0415
    from datakit.parallel import InlineExecutor  # noqa: PLC0415

    started = time.perf_counter()
    the_plan = plan(cfg)
    the_plan.images_dir.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(the_plan.images_dir)
    log(start_line(the_plan))
    bar = _progress_bar(the_plan.attempted, cfg.progress)
    own = executor is None
    executor = executor or InlineExecutor()
    failed = 0

    def on_outcome(outcome: Outcome) -> None:  # inline: every image as it lands
        nonlocal failed
        failed += not outcome.ok
        bar.update(1)
        if bar.n % 50 == 0:
            bar.set_postfix_str(f"failed {failed}", refresh=False)

    def on_partition(result: PartitionResult) -> None:  # elsewhere: a partition at a time
        nonlocal failed
        failed += len(result.failures)
        bar.update(result.finished)
        bar.set_postfix_str(f"failed {failed}", refresh=False)

    try:
        record = run_partitions(the_plan, executor, on_outcome, on_partition)
    finally:
        bar.close()
        if own:
            executor.close()
    result = finish(the_plan, record.results, stopped=record.stopped, elapsed=time.perf_counter() - started)
    if result.stopped is None:
        log(FINAL_MESSAGE.format(result.succeeded))
    return result


__all__ = sorted({"AssembleConfig", "assemble", *_WHERE, *_DOWNLOAD})
