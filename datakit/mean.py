"""Database -> per-pixel mean image: Caffe's ``compute_image_mean``, exact and parallel.

Caffe sums every record into a float32 BlobProto, which loses precision once
the sums pass 2^24 (about 65,000 records of value 255); we sum uint8 pixels
exactly in integers (a uint16 accumulator folded into uint64 every 257
records, which is also the fastest way numpy has to add bytes) and divide in
float64, so the mean is the correctly rounded one for any dataset size.
float_data records and HDF5 are summed in float64.

A small database of raw pixels (under POOL_MIN_BYTES) is summed in this
process, reading LMDB values as views of the map: starting worker processes
(or threads, which contend for the memory bandwidth and the GIL) costs more
than they save there. Otherwise records are summed in partitions whose partial sums merge exactly
(``sum_range``, ``sum_values``, run on a datakit.parallel Executor): a
database several processes may read (LMDB) is split into key ranges, each
read straight from the memory map by its worker; LevelDB allows one process
to open it, so there the main process reads and workers decode (encoded
records only). Encoded records are decoded as
compute_image_mean does (DecodeDatumNative: the file's own channel count); a
gray image in a color database is promoted to 3 channels instead of failing.

The mean is written as Caffe writes it (BlobProto with num=1 and
channels/height/width, packed float data) or as .npy float32 C x H x W, the
shape caffe.io and the trainer expect.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from datakit.formats.datum import datum_to_array, parse_datum_fields
from datakit.db import BACKENDS, get_backend, open_reader
from datakit.errors import ConfigError, DatabaseError, FormatError
from datakit.formats.blobproto import read_mean, write_mean
from datakit.report import progress_bar

if TYPE_CHECKING:  # the pool machinery (concurrent.futures, multiprocessing) is imported only when a pool runs
    from datakit.db.base import Reader
    from datakit.parallel import Executor, ProgressCounter

__all__ = ["MeanResult", "SumState", "compute_mean", "convert_mean", "mean_output_paths", "save_mean", "sum_range",
           "sum_values"]

_FOLD = 257  # 255 * 257 = 65535: the most uint8 records a uint16 sum can hold
# Below this many bytes of pixels a database is summed in this process: starting a pool (forking,
# each worker opening the database, the partial sums coming back) costs more than a second core saves.
POOL_MIN_BYTES = 1 << 30
_BUFSIZE = 1 << 15  # numpy's casting buffer (elements) for uint8 -> uint16 adds: larger than its 8192 default


@contextlib.contextmanager
def _casting_buffer() -> Iterator[None]:
    """numpy's ufunc buffer at _BUFSIZE while records are summed (the uint8 -> uint16 cast goes through
    it; fewer, larger chunks add faster), restored afterwards."""
    old = np.setbufsize(_BUFSIZE)
    try:
        yield
    finally:
        np.setbufsize(old)


@dataclass
class MeanResult:
    """The mean image (float64 C x H x W) over `count` records."""

    mean: np.ndarray
    count: int
    seconds: float = 0.0

    @property
    def per_channel(self) -> np.ndarray:
        return self.mean.reshape(self.mean.shape[0], -1).mean(axis=1)


class SumState(NamedTuple):
    """A partial sum, as a partition returns it (picklable): exact uint64 for bytes, float64 for floats."""

    shape: tuple[int, ...] | None
    first_key: str
    records: int  # (not `count`: that would hide tuple.count)
    u64: np.ndarray | None
    f64: np.ndarray | None


class _Sum:
    """Exact running sum of same-shaped records; mergeable across processes (state() / merge())."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.shape: tuple[int, ...] | None = None
        self.first_key = ""
        self.count = 0
        self._u16: np.ndarray | None = None
        self._u16_n = 0
        self.u64: np.ndarray | None = None
        self.f64: np.ndarray | None = None

    def _check(self, shape: tuple[int, ...], key: str) -> None:
        if self.shape is None:
            self.shape, self.first_key = shape, key
        elif shape != self.shape:
            raise FormatError(f"{self.where}: record {key!r} is {'x'.join(map(str, shape))} but record "
                              f"{self.first_key!r} is {'x'.join(map(str, self.shape))}; a mean needs one size "
                              "(convert with --resize-height/--resize-width)")

    def add_u8(self, flat: np.ndarray, shape: tuple[int, ...], key: str) -> None:
        self._check(shape, key)
        if self._u16 is None:
            self._u16 = np.zeros(flat.size, np.uint16)
            self.u64 = np.zeros(flat.size, np.uint64)
        np.add(self._u16, flat, out=self._u16, casting="unsafe")
        self._u16_n += 1
        self.count += 1
        if self._u16_n == _FOLD:
            self._fold()

    def _fold(self) -> None:
        if self._u16 is not None and self._u16_n:
            self.u64 += self._u16
            self._u16[:] = 0
            self._u16_n = 0

    def add_float(self, arr: np.ndarray, key: str) -> None:
        self._check(tuple(arr.shape), key)
        if self.f64 is None:
            self.f64 = np.zeros(arr.size, np.float64)
        self.f64 += arr.ravel()
        self.count += 1

    def add_float_slab(self, slab: np.ndarray, key: str) -> None:
        """Add the rows of an N x ... float array (HDF5)."""
        self._check(tuple(slab.shape[1:]), key)
        if self.f64 is None:
            self.f64 = np.zeros(int(np.prod(slab.shape[1:])), np.float64)
        self.f64 += np.add.reduce(slab.reshape(slab.shape[0], -1), axis=0, dtype=np.float64)
        self.count += slab.shape[0]

    def state(self) -> SumState:
        self._fold()
        return SumState(self.shape, self.first_key, self.count, self.u64, self.f64)

    def merge(self, state: SumState) -> None:
        """Add a partial sum (of another partition): exact, so partitions may merge in any grouping."""
        shape, key, count, u64, f64 = state
        if not count or shape is None:
            return
        self._check(shape, key)
        self.count += count
        if u64 is not None:
            self.u64 = u64 if self.u64 is None else self.u64 + u64
        if f64 is not None:
            self.f64 = f64 if self.f64 is None else self.f64 + f64

    def total(self) -> np.ndarray:
        self._fold()
        out = np.zeros(int(np.prod(self.shape)), np.float64) if self.shape else np.zeros(0)
        if self.u64 is not None:
            out += self.u64.astype(np.float64)
        if self.f64 is not None:
            out += self.f64
        return out


def _add_datum(acc: _Sum, key: bytes, value, color: bool | None) -> None:
    skey = key.decode("utf-8", "backslashreplace")
    where = f"{acc.where}: record {skey!r}"
    f = parse_datum_fields(value, where)
    if f.encoded:
        img = datum_to_array(f, color=color, where=where)
        acc.add_u8(img.reshape(-1), img.shape, skey)
    elif len(f.data):
        shape = (f.channels, f.height, f.width)
        if f.channels * f.height * f.width != len(f.data):
            raise FormatError(f"{where}: data has {len(f.data)} bytes, expected {'x'.join(map(str, shape))}")
        acc.add_u8(np.frombuffer(f.data, np.uint8), shape, skey)
    else:
        acc.add_float(datum_to_array(f, color=color, where=where), skey)


# -- partitions: pure functions of their arguments, run by an Executor --------------------------
def sum_range(path: str, backend: str, start: bytes | None, stop: bytes | None, color: bool | None) -> SumState:
    """The exact sum of the Datum records with `start` <= key < `stop` (a partition of a shared-read backend)."""
    from datakit.parallel import report_progress

    acc = _Sum(path)
    since = 0
    with get_backend(backend).open_reader(Path(path)) as reader, _casting_buffer():
        for key, value in reader.scan(start, stop, buffers=True):
            _add_datum(acc, key, value, color)
            since += 1
            if since == 512:
                report_progress(since)
                since = 0
    report_progress(since)
    return acc.state()


def sum_values(where: str, items: list[tuple[bytes, bytes]], color: bool | None) -> SumState:
    """The exact sum of serialized Datums read by the coordinator (backends one process may open)."""
    acc = _Sum(where)
    with _casting_buffer():
        for key, value in items:
            _add_datum(acc, key, value, color)
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


def compute_mean(db: str | os.PathLike, backend: str | None = None, *, workers: int = 0,
                 color: bool | None = None, progress: bool | None = None,
                 executor: Executor | None = None) -> MeanResult:
    """The per-pixel mean over every record of `db` (any backend).

    `color` decodes encoded records as color (True) / gray (False); None keeps
    each file's own channels, as compute_image_mean does. The partitions
    (key ranges, or batches of values for a backend one process may open) run
    on `executor`, by default `workers` local processes. workers=0 chooses: a
    database of raw pixels under POOL_MIN_BYTES is summed in this process,
    anything else on all cores.
    """
    started = time.perf_counter()
    reader = open_reader(db, backend)
    acc = _Sum(str(db))
    try:
        n = len(reader)
        if n == 0:
            raise DatabaseError(f"{db}: has no records; nothing to average")
        if reader.record_kind == "array":
            with progress_bar(n, progress, unit="rec", desc="mean") as bar:
                for first, slab, _ in reader.slabs():
                    acc.add_float_slab(slab, first)
                    bar.update(len(slab))
        else:
            color, raw_bytes = _settle_color(reader, color)
            if not workers and executor is None and 0 < n * raw_bytes < POOL_MIN_BYTES:
                workers = 1  # raw pixels, few enough that this process sums them sooner than a pool starts
            elif not workers:
                from datakit.workerpool import default_workers
                workers = default_workers()
            _sum_partitions(reader, acc, color, workers, n, progress, executor)
    finally:
        reader.close()
    mean = acc.total() / acc.count
    return MeanResult(mean.reshape(acc.shape), acc.count, time.perf_counter() - started)


def _sum_partitions(reader: Reader, acc: _Sum, color: bool | None, workers: int, n: int,
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
        futures = [ex.submit(sum_range, str(reader.path), reader.backend, a, b, color) for a, b in ranges]
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


def _settle_color(reader: Reader, color: bool | None) -> tuple[bool | None, int]:
    """Native decoding, except that a color first record makes every record color (gray ones promoted);
    and the first record's count of raw uint8 pixels (0 when it is encoded or float), to size the work."""
    key, value = next(iter(reader.raw_items()))  # the generator (and its read transaction) ends here
    where = f"{reader.path}: record {key!r}"
    f = parse_datum_fields(value, where)
    raw_bytes = 0 if f.encoded else len(f.data)
    if color is None and f.encoded and datum_to_array(f, color=None, where=where).shape[0] == 3:
        return True, raw_bytes
    return color, raw_bytes


def _sum_sequential(reader: Reader, acc: _Sum, color: bool | None, workers: int, n: int,
                    progress: bool | None, executor: Executor | None) -> None:
    """Backends one process may open (LevelDB) or small databases: read here; decode encoded records in
    partitions of 64 values, at most 4 per worker in flight (bounded memory)."""
    # owned bytes where values may cross to a worker; zero-copy views of a memory-mapped backend (LMDB)
    # when this process sums them all itself (each is used before the next is read)
    items = reader.raw_items() if workers > 1 else reader.scan(buffers=True)
    first = next(items)
    encoded = parse_datum_fields(first[1], f"{reader.path}: record {first[0]!r}").encoded
    _add_datum(acc, first[0], first[1], color)
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
    with progress_bar(n, progress, initial=1, unit="rec", desc="mean") as bar, _casting_buffer():
        since = 0
        for key, value in items:
            _add_datum(acc, key, value, color)
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


def mean_output_paths(out: str | os.PathLike, also_npy: bool) -> list[Path]:
    """OUT itself (.npy or BlobProto by suffix) and, with --npy, OUT with a .npy suffix too."""
    out = Path(out)
    paths = [out]
    if also_npy and out.suffix.lower() != ".npy":
        paths.append(out.with_suffix(".npy"))
    return paths


def save_mean(result_or_mean: MeanResult | np.ndarray, out: str | os.PathLike, *, also_npy: bool = False) -> list[Path]:
    """Write the mean as Caffe's BlobProto (num=1, C, H, W) or .npy float32 C x H x W, by suffix."""
    mean = result_or_mean.mean if isinstance(result_or_mean, MeanResult) else result_or_mean
    paths = mean_output_paths(out, also_npy)
    for p in paths:
        write_mean(p, mean.astype(np.float32))
    return paths


def convert_mean(src: str | os.PathLike, dst: str | os.PathLike) -> np.ndarray:
    """.binaryproto <-> .npy (any direction, by suffix); values are copied bit for bit."""
    if Path(src).resolve() == Path(dst).resolve():
        raise ConfigError(f"{src}: input and output are the same file")
    mean = read_mean(src)
    write_mean(dst, mean)
    return mean
