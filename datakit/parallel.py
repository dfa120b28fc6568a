"""Executors: where the partitions of a fan-out stage run.

Every stage that fans out (assemble, convert, mean, grid run) is written as
plan -> run one partition -> finish. The partition function is a plain,
picklable module-level function of its arguments (no globals set at fork),
so that the same function runs in this process, in local worker processes or
on a Dask cluster. The coordinator (the stage's own code) submits partitions
through an ``Executor``, consumes results as they complete, and cancels what
is left when it decides to stop (Ctrl-C, a dead-list stop, a failure).

The seam is deliberately the small common subset of ``concurrent.futures``
and ``dask.distributed.Client``: ``submit`` returning a future with
``result()`` / ``cancel()`` / ``done()``, ``as_completed`` over futures, and
``close``. A Dask executor implements the same four methods over a client.

Beside the seam, the local machinery the CPU-heavy stages share (and
``benchmarks/`` import from here):

* ``worker_pool`` / ``default_workers`` (datakit.workerpool): forked
  processes that run OpenCV on one thread, keep freed memory, leave Ctrl-C to
  the coordinator and exit when it dies;
* ``SharedArena`` / ``ArenaSlot`` / ``Lease`` / ``ArenaMarker``
  (datakit.arena): shared memory that workers write results into;
* ``map_ordered``: a bounded, order-keeping map over batches in a worker
  pool, with the arena as its transport (what ``datakit convert`` runs on).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from datakit.arena import ArenaMarker, ArenaSlot, Lease, MarkerKind, SharedArena
from datakit.workerpool import WorkerSetup, default_workers, opencv_one_thread, start_worker, worker_pool

T = TypeVar("T")


class TaskFuture(Protocol):
    """What a coordinator may do with a submitted partition (concurrent.futures and Dask both offer it)."""

    def result(self, timeout: float | None = None) -> Any: ...
    def cancel(self) -> bool: ...
    def done(self) -> bool: ...


class Executor:
    """Runs partition functions somewhere; the coordinator never needs to know where.

    Contract:
    - ``submit(fn, *args, **kwargs)`` schedules ``fn(*args, **kwargs)``; ``fn``
      and its arguments must be picklable (module-level function, plain data).
    - ``as_completed(futures)`` yields each future once, as it finishes.
    - ``cancel(futures)`` stops what has not started; running tasks may finish.
    - ``close()`` releases the workers (also on leaving a ``with`` block).
    ``workers`` is how many partitions may run at once, for sizing partitions.
    """

    name = "executor"
    workers = 1

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture:
        raise NotImplementedError

    def as_completed(self, futures: Iterable[TaskFuture]) -> Iterator[TaskFuture]:
        raise NotImplementedError

    def cancel(self, futures: Iterable[TaskFuture]) -> None:
        for future in futures:
            future.cancel()

    def close(self) -> None:
        """Release the workers; idempotent."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineExecutor(Executor):
    """Runs each partition in this process, at submit time: deterministic, no pickling, for one worker.

    An exception raised by the partition is kept in its future, as a pool would. After a Ctrl-C
    (KeyboardInterrupt) in one partition, the partitions submitted later are not run: their futures
    hold a KeyboardInterrupt too, as a pool stopped by the Ctrl-C would not start them (they ran to
    the end, so an interrupted conversion went on writing every shard after the one it stopped in).
    """

    name = "inline"
    workers = 1

    def __init__(self) -> None:
        self.interrupted = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture:
        future: cf.Future = cf.Future()
        if self.interrupted:
            future.set_exception(KeyboardInterrupt())
            return future
        try:
            future.set_result(fn(*args, **kwargs))
        except KeyboardInterrupt as err:  # the coordinator sees it at result()
            self.interrupted = True
            future.set_exception(err)
        except BaseException as err:
            future.set_exception(err)
        return future

    def as_completed(self, futures: Iterable[TaskFuture]) -> Iterator[TaskFuture]:
        yield from futures


class LocalExecutor(Executor):
    """Local worker processes (``kind="processes"``, forked on Linux) or threads (``kind="threads"``).

    Threads suit partitions that wait on I/O and release the GIL (downloads,
    OpenCV, LMDB); processes suit pure-Python CPU work. ``workers <= 1`` with
    processes still uses one worker process, so that the partition function is
    exercised through pickling exactly as on a cluster; use InlineExecutor for
    in-process work.
    """

    name = "local"

    def __init__(self, workers: int, kind: str = "processes",
                 initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> None:
        if kind not in ("processes", "threads"):
            raise ValueError(f"LocalExecutor kind must be 'processes' or 'threads', not {kind!r}")
        self.workers = max(1, int(workers))
        self.kind = kind
        if kind == "threads":
            self._pool: cf.Executor = cf.ThreadPoolExecutor(self.workers, initializer=initializer, initargs=initargs)
        else:
            fork = sys.platform.startswith("linux")
            ctx = multiprocessing.get_context("fork" if fork else "spawn")
            self._pool = cf.ProcessPoolExecutor(
                self.workers, mp_context=ctx, initializer=start_worker,
                initargs=(WorkerSetup(os.getpid(), fresh=not fork), initializer, initargs))

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture:
        return self._pool.submit(fn, *args, **kwargs)

    def as_completed(self, futures: Iterable[TaskFuture]) -> Iterator[TaskFuture]:
        return cf.as_completed(list(futures))  # type: ignore[arg-type]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def run_all(executor: Executor, fn: Callable[..., T], argument_lists: Iterable[tuple],
            on_done: Callable[[], None] | None = None) -> list[T]:
    """Submit ``fn(*args)`` for every tuple, wait for all, return results in submission order.

    On the first failure the remaining tasks are cancelled and the error is raised. ``on_done()``
    is called after each task that finished (a progress bar's update).
    """
    futures = [executor.submit(fn, *args) for args in argument_lists]
    try:
        for future in executor.as_completed(futures):
            future.result()
            if on_done is not None:
                on_done()
    except BaseException:
        executor.cancel(futures)
        raise
    return [f.result() for f in futures]


# ------------------------------------------------------------------------- progress counter --
_worker_progress: ProgressCounter | None = None


class ProgressCounter:
    """A count of work done that partitions in local worker processes add to, for the coordinator's bar.

    Shared memory inherited by the workers (pass ``initializer=counter.install``
    to LocalExecutor); never pickled with a task, so partition functions stay
    the same on any executor: :func:`report_progress` is a no-op where no
    counter was installed (this process, a cluster).
    """

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self._value = ctx.Value("q", 0)

    @property
    def value(self) -> int:
        return int(self._value.value)

    def add(self, n: int) -> None:
        with self._value.get_lock():
            self._value.value += n

    def install(self) -> None:
        """Worker initializer: report_progress() in this process adds here."""
        global _worker_progress
        _worker_progress = self


def report_progress(n: int) -> None:
    """Called by a partition function as it goes: adds `n` to the installed ProgressCounter, if any."""
    if _worker_progress is not None and n:
        _worker_progress.add(n)


# ------------------------------------------------------------------------------ ordered map --
# The arena is an inherited mapping: it reaches a worker once, through the pool's initializer,
# and is held here for the worker's tasks, which receive their slot as an argument (ArenaSlot).
_worker_arena: SharedArena | None = None


def _hold_arena(arena: SharedArena) -> None:
    global _worker_arena
    _worker_arena = arena


def _run_chunk(fn: Callable[..., list], args: tuple, chunk: list, slot: int | None) -> tuple[float, list]:
    """Worker side of map_ordered: fn(*args, chunk, ArenaSlot | None), timed for batch sizing."""
    started = time.perf_counter()
    out = fn(*args, chunk, _worker_arena.slot(slot) if slot is not None and _worker_arena is not None else None)
    return time.perf_counter() - started, out


def _take_from_arena(arena: SharedArena, slot: int | None, results: list) -> tuple[list, int]:
    """(result, lease) with every ArenaMarker in a result replaced by its payload; the bytes used.

    Lends `slot` for as many payloads as are views into it.
    """
    out, used, lent = [], 0, 0
    lease = Lease(arena, slot) if slot is not None else None
    for result in results:
        held = None
        if any(isinstance(x, ArenaMarker) for x in result):
            parts = list(result)
            for i, x in enumerate(parts):
                if isinstance(x, ArenaMarker):
                    used += x.nbytes
                    parts[i] = arena.take(x)
                    if x.kind is MarkerKind.VIEW:
                        held, lent = lease, lent + 1
            result = tuple(parts)
        out.append((result, held))
    if slot is not None:
        arena.lend(slot, lent)
    return out, used


def map_ordered(fn: Callable[..., list], items: Iterable, *, args: tuple = (), workers: int,
                batch: int = 8, max_batch: int = 128, batch_seconds: float = 0.025, window_per_worker: int = 4,
                slot_bytes: int = 0, spare_slots: int = 0,
                arena_factory: Callable[[int, int], SharedArena] = SharedArena
                ) -> Generator[tuple[Any, Lease | None], None, None]:
    """Apply ``fn(*args, chunk, slot)`` to batches of `items` in worker processes; yield results in input order.

    `fn` is a module-level function returning a list of result tuples for
    its chunk; `args` (picklable) is what every task needs. Each result is
    yielded as ``(result, lease)``: `lease` is None, or a Lease to release()
    once the result's payload (a view into shared memory) has been consumed.

    At most ``workers * window_per_worker`` batches are in flight, so memory
    stays bounded however long the input is and however slow the consumer.
    The batch size adapts so that a batch takes about `batch_seconds` in a
    worker: small items travel in large batches (the cost of sending a task
    dominates otherwise), large ones in small batches (bounded memory, even
    load). With `slot_bytes` > 0 and forked workers, each batch in flight
    owns a slot of a SharedArena (made by `arena_factory(slots, slot_bytes)`),
    with `spare_slots` slots beyond those in flight for payloads waiting to be
    consumed; `fn` receives an ArenaSlot (or None) to put payloads into and
    returns their ArenaMarkers in place of the payloads; batches are also
    sized to fill about three quarters of a slot. With `workers <= 1`
    everything runs in this process and `slot` is None.
    """
    iterator = iter(items)
    size = max(1, batch)

    def batches() -> Iterator[list]:
        while True:
            chunk = [x for _, x in zip(range(size), iterator)]
            if not chunk:
                return
            yield chunk

    if workers <= 1:
        for chunk in batches():
            for result in fn(*args, chunk, None):
                yield result, None
        return
    window = workers * window_per_worker
    arena = None
    if slot_bytes > 0 and sys.platform.startswith("linux"):  # forked workers inherit the mapping
        arena = arena_factory(window + spare_slots, slot_bytes)
    try:
        with worker_pool(workers, _hold_arena if arena is not None else None, (arena,)) as pool:
            pending: collections.deque[tuple[int, int | None, cf.Future]] = collections.deque()

            def submit(chunk: list) -> None:
                slot = arena.acquire() if arena is not None else None
                pending.append((len(chunk), slot, pool.submit(_run_chunk, fn, args, chunk, slot)))

            source = batches()
            for chunk in source:
                submit(chunk)
                if len(pending) >= window:
                    break
            try:
                while pending:
                    count, slot, future = pending.popleft()
                    elapsed, results = future.result()
                    per_item = elapsed / max(1, count)
                    size = int(min(max_batch, max(1, batch_seconds / max(per_item, 1e-6))))
                    if arena is not None:
                        results, used = _take_from_arena(arena, slot, results)
                        if used:
                            size = max(1, min(size, int(0.75 * slot_bytes / (used / count))))
                    else:
                        results = [(result, None) for result in results]
                    nxt = next(source, None)
                    if nxt is not None:
                        submit(nxt)
                    yield from results
            finally:
                for _, _, f in pending:
                    f.cancel()
    finally:
        if arena is not None:
            arena.close()


__all__ = ["ArenaMarker", "ArenaSlot", "Executor", "InlineExecutor", "Lease", "LocalExecutor", "MarkerKind",
           "ProgressCounter", "SharedArena", "TaskFuture", "WorkerSetup", "default_workers", "map_ordered",
           "opencv_one_thread", "report_progress", "run_all", "start_worker", "worker_pool"]
