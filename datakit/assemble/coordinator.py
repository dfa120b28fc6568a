"""The coordinator: runs a plan's partitions on an executor and decides when to stop.

Policy, all of it here and none in the partitions:

- **Dead list.** The plan's probe partitions (the first ``dead_after`` jobs)
  run one at a time. When every one of those attempts failed and jobs are
  left, the run stops as ``dead_list`` and the other partitions are never
  started. Running the probe alone keeps the stop as early as it was with one
  downloader (exactly ``dead_after`` requests) on any executor, at the price
  of one pause in the pipeline after the probe.
- **Ctrl-C.** A partition running in a main thread (this process under the
  default ``InlineExecutor``, or a worker process, which gets the terminal's
  SIGINT too) returns what it finished, marked interrupted. A
  KeyboardInterrupt in the coordinator itself (between partitions, or while
  it waits on a pool) counts the same. Either way the coordinator stops
  submitting, cancels what has not started, and keeps the results of what
  still returns, so ``failed.csv`` and the summary count them.
- **Bounds.** With an executor that runs several partitions at once each
  gets its share of ``concurrency`` / ``per_host`` (``DownloadOptions.share``),
  so the limits still hold for the whole run; at most twice the executor's
  workers are submitted ahead.

Under the default InlineExecutor each partition runs in this process, one
after the other, with the whole concurrency, and reports every outcome to the
progress bar as it happens; other executors move the bar a partition at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from datakit.assemble.plan import Partition, Plan
from datakit.download.outcome import Outcome
from datakit.download.partition import PartitionResult, run_partition
from datakit.parallel import Executor, InlineExecutor, TaskFuture


@dataclass
class RunRecord:
    """What the coordinator saw: the partitions' results, why it stopped, and what it cancelled."""

    results: list[PartitionResult] = field(default_factory=list)
    stopped: str | None = None       # None, 'dead_list' or 'interrupted'
    submitted: int = 0
    cancelled: int = 0               # partitions submitted and then cancelled before they ran
    never_started: int = 0           # partitions not submitted at all because the run stopped


def run_partitions(plan: Plan, executor: Executor, on_outcome: Callable[[Outcome], None] | None = None,
                   on_partition: Callable[[PartitionResult], None] | None = None) -> RunRecord:
    """Run every partition of `plan` on `executor` under the module's stop policy.

    `on_outcome` sees each outcome as it happens when partitions run in this
    process (InlineExecutor); `on_partition` sees each partition's result.
    Exceptions other than KeyboardInterrupt cancel what is left and propagate.
    """
    inline = isinstance(executor, InlineExecutor)
    options = plan.options if inline else plan.options.share(executor.workers)
    per_outcome = on_outcome if inline else None
    ahead = 1 if inline else max(1, 2 * executor.workers)
    dead_after = plan.config.dead_after
    record = RunRecord()
    todo: list[Partition] = list(reversed(plan.partitions))  # pop() takes the next one
    running: dict[TaskFuture, Partition] = {}
    attempted = succeeded = 0

    def take(future: TaskFuture) -> None:
        nonlocal attempted, succeeded
        running.pop(future)
        result: PartitionResult = future.result()
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
                running[executor.submit(run_partition, part.jobs, options, part.index, per_outcome)] = part
                record.submitted += 1
            take(next(iter(executor.as_completed(list(running)))))
            if (record.stopped is None and dead_after > 0 and succeeded == 0 and attempted >= dead_after
                    and (todo or running)):
                record.stopped = "dead_list"
    except KeyboardInterrupt:
        record.stopped = "interrupted"
    except BaseException:
        executor.cancel(list(running))
        raise
    if running:
        _wind_down(executor, running, record)
    record.never_started = len(todo)
    return record


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
