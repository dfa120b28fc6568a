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
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

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

    An exception raised by the partition is kept in its future, as a pool would.
    """

    name = "inline"
    workers = 1

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # KeyboardInterrupt too: the coordinator sees it at result()
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
            ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=initializer,
                                                initargs=initargs)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture:
        return self._pool.submit(fn, *args, **kwargs)

    def as_completed(self, futures: Iterable[TaskFuture]) -> Iterator[TaskFuture]:
        return cf.as_completed(list(futures))  # type: ignore[arg-type]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def run_all(executor: Executor, fn: Callable[..., T], argument_lists: Iterable[tuple]) -> list[T]:
    """Submit ``fn(*args)`` for every tuple, wait for all, return results in submission order.

    On the first failure the remaining tasks are cancelled and the error is raised.
    """
    futures = [executor.submit(fn, *args) for args in argument_lists]
    try:
        for future in executor.as_completed(futures):
            future.result()
    except BaseException:
        executor.cancel(futures)
        raise
    return [f.result() for f in futures]


__all__ = ["Executor", "InlineExecutor", "LocalExecutor", "TaskFuture", "run_all"]
