"""The coordinator: runs a plan's partitions on an executor and decides when to stop.

Policy, all of it here and none in the partitions:

- **Dead list** (the first ``dead_after`` attempts all fail: stop, cancel the
  rest). Two executions of one rule:

  - In this process (``InlineExecutor``, the default) the partitions are
    fused into one stream on one event loop, as a single partition call, and
    the coordinator sees every outcome as it lands: it stops the stream after
    the ``dead_after``-th failure (requests already in flight are cancelled),
    exactly as the single downloader before partitions did, with no pause
    between partitions. Outcomes are filed under their partition by the tag
    each job carries.
  - Elsewhere (worker processes, a cluster) single outcomes cannot stream
    back, so the plan cuts the first ``dead_after`` jobs into "probe"
    partitions that end exactly there; the coordinator runs those one at a
    time and, when every attempt in them failed, never starts the rest
    (exactly ``dead_after`` requests, at the price of one pipeline pause).

- **Ctrl-C.** A partition running in a main thread (this process, or a
  worker process, which gets the terminal's SIGINT too) returns what it
  finished, marked interrupted. A KeyboardInterrupt in the coordinator itself
  (while it waits on a pool) counts the same. Either way the coordinator
  stops submitting, cancels what has not started, and keeps the results of
  what still returns, so ``failed.csv`` and the summary count them
  (partitions running in threads get no signal: they finish their jobs first).
- **Bounds.** When an executor runs several partitions at once each gets its
  share of ``concurrency`` / ``per_host`` (``DownloadOptions.share``), so the
  limits hold for the whole run; at most twice the executor's workers are
  submitted ahead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from datakit.assemble.planner import Partition, Plan
from datakit.download.outcome import FetchJob, Outcome
from datakit.download.partition import PartitionResult, run_partition
from datakit.errors import DatakitError, DownloadError
from datakit.parallel import Executor, InlineExecutor, TaskFuture


@dataclass
class RunRecord:
    """What the coordinator saw: the partitions' results, why it stopped, and what it cancelled."""

    results: list[PartitionResult] = field(default_factory=list)
    stopped: str | None = None       # None, 'dead_list' or 'interrupted'
    submitted: int = 0               # executor tasks submitted
    cancelled: int = 0               # tasks submitted and then cancelled before they ran
    never_started: int = 0           # partitions none of whose jobs was attempted because the run stopped


def run_partitions(plan: Plan, executor: Executor, on_outcome: Callable[[Outcome], None] | None = None,
                   on_partition: Callable[[PartitionResult], None] | None = None) -> RunRecord:
    """Run every partition of `plan` on `executor` under the module's stop policy.

    `on_outcome` sees each outcome as it lands when partitions run in this
    process (InlineExecutor); `on_partition` sees each partition's result as
    it comes back from elsewhere. Exceptions other than KeyboardInterrupt
    cancel what is left and propagate.
    """
    if isinstance(executor, InlineExecutor):
        return _run_here(plan, executor, on_outcome)
    return _run_elsewhere(plan, executor, on_partition)


def _dead(plan: Plan, attempted: int, succeeded: int) -> bool:
    """The first `dead_after` attempts all failed and jobs are left: the list looks dead."""
    dead_after = plan.config.dead_after
    return dead_after > 0 and succeeded == 0 and attempted >= dead_after and plan.attempted > attempted


def _run_here(plan: Plan, executor: Executor, on_outcome: Callable[[Outcome], None] | None) -> RunRecord:
    """All partitions as one stream in this process; the dead-list check after every outcome."""
    record = RunRecord()
    results = {part.index: PartitionResult(part.index) for part in plan.partitions}
    attempted = succeeded = 0

    def file(outcome: Outcome) -> bool:
        nonlocal attempted, succeeded
        result = results[outcome.job.partition]
        result.stats.add(outcome)
        if outcome.ok:
            result.ok_names.append(outcome.job.dest.name)
            succeeded += 1
        else:
            result.failures.append(outcome)
        attempted += 1
        if on_outcome is not None:
            on_outcome(outcome)
        if record.stopped is None and _dead(plan, attempted, succeeded):
            record.stopped = "dead_list"
        return record.stopped is not None

    jobs = plan.jobs
    try:
        if jobs:
            record.submitted = 1
            if executor.submit(run_partition, jobs, plan.options, -1, file).result().interrupted:
                record.stopped = "interrupted"
    except KeyboardInterrupt:  # between the loop's start and its Ctrl-C handler: the same stop
        record.stopped = "interrupted"
    record.results = [r for r in results.values() if r.finished]
    record.never_started = len(results) - len(record.results)
    return record


def _run_elsewhere(plan: Plan, executor: Executor,
                   on_partition: Callable[[PartitionResult], None] | None) -> RunRecord:
    """Partitions as executor tasks: probe partitions alone, then up to 2 x workers in flight."""
    options = plan.options.share(executor.workers)
    ahead = max(1, 2 * executor.workers)
    record = RunRecord()
    todo: list[Partition] = list(reversed(plan.partitions))  # pop() takes the next one
    running: dict[TaskFuture, Partition] = {}
    attempted = succeeded = 0

    def take(future: TaskFuture) -> None:
        nonlocal attempted, succeeded
        part = running.pop(future)
        try:
            result: PartitionResult = future.result()
        except (DatakitError, KeyboardInterrupt):
            raise  # already one line naming its file (a full disk...), or Ctrl-C
        except Exception as err:  # noqa: BLE001 - e.g. a worker lost once too often (Dask's KilledWorker)
            keys = [job.key for job in part.jobs]
            raise DownloadError(f"{plan.config.out}: partition {part.index} (manifest rows {min(keys)}..{max(keys)}, "
                                f"{len(keys)} downloads) failed on {executor.name}: {type(err).__name__}: {err}; "
                                "its finished images are kept: rerun the same command to resume") from None
        record.results.append(result)
        attempted += result.finished
        succeeded += result.stats.ok
        if on_partition is not None:
            on_partition(result)
        if result.interrupted:
            record.stopped = "interrupted"

    try:
        while record.stopped is None and (todo or running):
            window = 1 if todo and todo[-1].probe else ahead
            while todo and len(running) < window:
                part = todo.pop()
                running[executor.submit(run_partition, _absolute(part.jobs), options, part.index)] = part
                record.submitted += 1
            take(next(iter(executor.as_completed(list(running)))))
            if record.stopped is None and _dead(plan, attempted, succeeded):
                record.stopped = "dead_list"
    except KeyboardInterrupt:
        record.stopped = "interrupted"
    except BaseException:
        executor.cancel(list(running))
        raise
    if running:
        _wind_down(executor, running, record)
    record.never_started = len(todo) + record.cancelled
    return record


def _absolute(jobs: list[FetchJob]) -> list[FetchJob]:
    """The jobs with absolute destinations: a Dask worker started in another folder would resolve
    a relative ``--out`` against its own (the images landed there while the lists, written here,
    named files that were not here). Outcomes are filed by name, so nothing else changes."""
    return [replace(j, dest=Path(os.path.abspath(j.dest))) for j in jobs]


def _wind_down(executor: Executor, running: dict[TaskFuture, Partition], record: RunRecord) -> None:
    """After a stop: cancel what has not started, keep the results of what still returns."""
    futures = list(running)
    executor.cancel(futures)
    for future in futures:
        cancelled = getattr(future, "cancelled", None)
        if cancelled is not None and cancelled():
            record.cancelled += 1
            continue
        try:
            result = future.result()
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting now (finished files stay on disk)
            raise
        except Exception:  # a partition that failed while the run was stopping: its finished files stay
            continue
        record.results.append(result)
