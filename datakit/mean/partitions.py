"""How ``compute_mean`` sums a database's Datum records: partitions on an Executor, or here.

* A backend several processes may read (LMDB) is split into key ranges of about
  equal size (``sum_range``); each worker opens its own reader and sums its range
  straight from the memory map.
* A backend one process may open (LevelDB), or a small database: this process reads;
  encoded records are decoded in batches of 64 values on the workers (``sum_values``,
  at most 4 batches per worker in flight, so memory stays bounded), raw ones are
  summed here.

The partition functions are pure functions of their arguments (picklable for a
process pool or a cluster); partial sums merge in key order, so float sums repeat
exactly whatever order the partitions finished in. A progress bar follows the
workers' shared counter; an interrupt cancels the partitions not yet run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from datakit.db import BACKENDS, get_backend
from datakit.formats.datum import parse_datum_fields
from datakit.mean.sums import RecordSum, SumState, add_datum, casting_buffer
from datakit.report import progress_bar

if TYPE_CHECKING:  # the pool machinery (concurrent.futures, multiprocessing) is imported only when a pool runs
    from datakit.db.base import Reader
    from datakit.parallel import Executor, ProgressCounter


# -- partitions: pure functions of their arguments, run by an Executor --------------------------
def sum_range(path: str, backend: str, start: bytes | None, stop: bytes | None, color: bool | None) -> SumState:
    """The exact sum of the Datum records with `start` <= key < `stop` (a partition of a shared-read backend)."""
    from datakit.parallel import report_progress

    acc = RecordSum(path)
    since = 0
    with get_backend(backend).open_reader(Path(path)) as reader, casting_buffer():
        for key, value in reader.scan(start, stop, buffers=True):
            add_datum(acc, key, value, color)
            since += 1
            if since == 512:
                report_progress(since)
                since = 0
    report_progress(since)
    return acc.state()


def sum_values(where: str, items: list[tuple[bytes, bytes]], color: bool | None) -> SumState:
    """The exact sum of serialized Datums read by the coordinator (backends one process may open)."""
    acc = RecordSum(where)
    with casting_buffer():
        for key, value in items:
            add_datum(acc, key, value, color)
    return acc.state()


def _split_keys(reader: Reader, parts: int) -> list[tuple[bytes | None, bytes | None]]:
    """Key ranges holding about len/parts records each; one pass over the keys, O(parts) memory."""
    n = len(reader)
    wanted = {n * i // parts: i for i in range(1, parts)}
    bounds: list[bytes | None] = [None] * (parts + 1)
    for position, key in enumerate(reader.keys()):
        if position in wanted:
            bounds[wanted[position]] = bytes(key)
    return list(zip(bounds[:-1], bounds[1:]))


def sum_partitions(reader: Reader, acc: RecordSum, color: bool | None, workers: int, n: int,
                    progress: bool | None, executor: Executor | None) -> None:
    """Key ranges on worker processes (or the caller's executor) where the backend allows shared reads,
    else read here and decode on the workers (_sum_sequential)."""
    parallel = executor is not None or workers > 1
    shared = getattr(reader, "shared_reads", BACKENDS[reader.backend].shared_reads)  # a reader may know better
    if not (shared and parallel and n >= 2 * 256):
        _sum_sequential(reader, acc, color, workers if parallel else 1, n, progress, executor)
        return
    from datakit.parallel import ProgressCounter

    # locally one key range per worker (each partial sum crosses the pipe: a few MB); an
    # executor given by the caller (a cluster) gets more, smaller partitions to balance
    parts = min(n // 256, 4 * executor.workers if executor is not None else workers)
    ranges = _split_keys(reader, parts)
    reader.close()  # each partition opens its own reader
    counter = ProgressCounter()
    with _executor(executor, workers, counter) as ex:
        # absolute: a Dask worker started in another folder resolves a relative path against its own
        where = os.path.abspath(reader.path)
        futures = [ex.submit(sum_range, where, reader.backend, a, b, color) for a, b in ranges]
        states = _gather(ex, futures, n, progress, counter)
    for state in states:  # in key order, whatever order they finished in: float sums repeat exactly
        acc.merge(state)


@contextlib.contextmanager
def _executor(given: Executor | None, workers: int, counter: ProgressCounter | None = None) -> Iterator[Executor]:
    """The caller's executor, or local processes that decode with one OpenCV thread each (and count
    their progress into `counter`)."""
    if given is not None:
        yield given
        return
    from datakit.parallel import LocalExecutor, opencv_one_thread

    with opencv_one_thread(), LocalExecutor(workers, initializer=counter.install if counter else None) as ex:
        yield ex


def _gather(ex: Executor, futures: list, total: int, progress: bool | None,
            counter: ProgressCounter) -> list[SumState]:
    """Wait for every partition, the bar following the workers' counter (or finished partitions where
    none is shared); results in submission order."""
    import concurrent.futures as cf

    bar = progress_bar(total, progress, unit="rec", desc="mean")  # after the pool has forked
    pending = list(futures)
    try:
        while pending:
            if all(isinstance(f, cf.Future) for f in pending):  # local: wake up for the bar, or when all are done
                pending = list(cf.wait(pending, timeout=0.25)[1])
            else:
                next(iter(ex.as_completed(pending)))
                pending = [f for f in pending if not f.done()]
            bar.n = counter.value or sum(f.result().records for f in futures if f.done())
            bar.refresh()
        states = [f.result() for f in futures]
    except BaseException:
        ex.cancel(futures)
        raise
    finally:
        bar.n = total  # the bar ends at the total, not at the last update
        bar.close()
    return states


def _sum_sequential(reader: Reader, acc: RecordSum, color: bool | None, workers: int, n: int,
                    progress: bool | None, executor: Executor | None) -> None:
    """Backends one process may open (LevelDB) or small databases: read here; decode encoded records in
    partitions of 64 values, at most 4 per worker in flight (bounded memory)."""
    # owned bytes where values may cross to a worker; zero-copy views of a memory-mapped backend (LMDB)
    # when this process sums them all itself (each is used before the next is read)
    items = reader.raw_items() if workers > 1 else reader.scan(buffers=True)
    first = next(items)
    encoded = parse_datum_fields(first[1], f"{reader.path}: record {first[0]!r}").encoded
    add_datum(acc, first[0], first[1], color)
    if encoded and workers > 1:
        with _executor(executor, workers) as ex:
            bar = progress_bar(n, progress, initial=1, unit="rec", desc="mean")  # after the pool has forked
            pending: list = []
            try:
                for batch in _chunks(items, 64):
                    if len(pending) >= workers * 4:
                        done = next(iter(ex.as_completed(pending)))
                        pending.remove(done)
                        acc.merge(done.result())
                        bar.update(done.result().records)
                    pending.append(ex.submit(sum_values, acc.where, batch, color))
                for done in ex.as_completed(pending):
                    acc.merge(done.result())
                    bar.update(done.result().records)
            except BaseException:
                ex.cancel(pending)
                raise
            finally:
                bar.close()
        return
    with progress_bar(n, progress, initial=1, unit="rec", desc="mean") as bar, casting_buffer():
        since = 0
        for key, value in items:
            add_datum(acc, key, value, color)
            since += 1
            if since == 256:
                bar.update(since)
                since = 0
        bar.update(since)


def _chunks(items: Iterable, size: int):
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
