"""``run_partition``: the unit of download work an executor runs, in this process, a worker or a cluster.

A module-level function of plain data (a list of ``FetchJob`` and a
``DownloadOptions``) that opens its own event loop and aiohttp session and
returns a ``PartitionResult`` of plain data, so it pickles both ways and runs
unchanged under ``InlineExecutor``, ``LocalExecutor`` or a Dask executor.
The files it downloads are on disk under each job's ``dest`` when it returns.

Ctrl-C: when it runs in a main thread (this process, or a worker process
that received the terminal's SIGINT too) it stops starting requests, cancels
those in flight and returns what finished, marked ``interrupted``; the
coordinator then cancels the partitions that are left.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from datakit.download.downloader import Downloader
from datakit.download.options import DownloadOptions
from datakit.download.outcome import FetchJob, Outcome, Stats


@dataclass
class PartitionResult:
    """What one partition did: its stats, the names it stored, its failures, whether Ctrl-C cut it short."""

    index: int = 0
    stats: Stats = field(default_factory=Stats)
    ok_names: list[str] = field(default_factory=list)
    failures: list[Outcome] = field(default_factory=list)
    interrupted: bool = False

    @property
    def finished(self) -> int:
        """Jobs that reached an outcome (all of them unless interrupted)."""
        return self.stats.ok + self.stats.failed


def run_partition(jobs: Sequence[FetchJob], options: DownloadOptions | None = None, index: int = 0,
                  on_outcome: Callable[[Outcome], bool | None] | None = None) -> PartitionResult:
    """Download `jobs` on a fresh event loop; see the module docstring.

    `on_outcome` is called for every finished job, on the loop's thread, by a
    coordinator in the same process (a per-image progress bar, a stop after
    the first outcomes): returning True stops the partition (no new requests,
    those in flight cancelled). Leave it None when the partition runs
    elsewhere; nothing else depends on it.
    """
    result = PartitionResult(index)

    def keep(outcome: Outcome) -> bool | None:
        if outcome.ok:
            result.ok_names.append(outcome.job.dest.name)
        else:
            result.failures.append(outcome)
        return on_outcome(outcome) if on_outcome is not None else None

    async def main() -> Stats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed, previous = False, None
        if threading.current_thread() is threading.main_thread():
            def interrupted() -> None:
                result.interrupted = True
                stop.set()
            try:
                previous = signal.getsignal(signal.SIGINT)
                loop.add_signal_handler(signal.SIGINT, interrupted)
                installed = True
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            return await Downloader(options).run(jobs, keep, stop)
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)
                if previous is not None:  # e.g. a worker's SIG_IGN, rather than Python's default
                    signal.signal(signal.SIGINT, previous)

    if jobs:
        result.stats = asyncio.run(main())
    return result


def download_partition(jobs: Sequence[FetchJob], options: DownloadOptions | None = None
                       ) -> tuple[Stats, list[Outcome]]:
    """One partition's stats and failures (``run_partition`` without the names)."""
    result = run_partition(jobs, options)
    return result.stats, result.failures
