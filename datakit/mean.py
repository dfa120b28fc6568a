"""Database -> per-pixel mean image: Caffe's ``compute_image_mean``, exact and parallel.

Caffe sums every record into a float32 BlobProto, which loses precision once
the sums pass 2^24 (about 65,000 records of value 255); we sum uint8 pixels
exactly in integers (a uint16 accumulator folded into uint64 every 257
records, which is also the fastest way numpy has to add bytes) and divide in
float64, so the mean is the correctly rounded one for any dataset size.
float_data records and HDF5 are summed in float64.

Records are read in parallel: an LMDB is split into key ranges, one per
worker process, each reading its range straight from the memory map;
LevelDB allows one process to open it, so there the main process reads and
workers decode (encoded records only). Encoded records are decoded as
compute_image_mean does (DecodeDatumNative: the file's own channel count); a
gray image in a color database is promoted to 3 channels instead of failing.

The mean is written as Caffe writes it (BlobProto with num=1 and
channels/height/width, packed float data) or as .npy float32 C x H x W, the
shape caffe.io and the trainer expect.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable

import numpy as np

from datakit.datum import datum_to_array, parse_datum_fields
from datakit.db import Reader, open_reader
from datakit.errors import ConfigError, DatabaseError, FormatError
from datakit.formats.blobproto import read_mean, write_mean

__all__ = ["MeanResult", "compute_mean", "save_mean", "convert_mean", "mean_output_paths"]

_FOLD = 257  # 255 * 257 = 65535: the most uint8 records a uint16 sum can hold


@dataclass
class MeanResult:
    """The mean image (float64 C x H x W) over `count` records."""

    mean: np.ndarray
    count: int
    seconds: float = 0.0

    @property
    def per_channel(self) -> np.ndarray:
        return self.mean.reshape(self.mean.shape[0], -1).mean(axis=1)


class _Sum:
    """Exact running sum of same-shaped records; mergeable across processes."""

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

    def state(self) -> tuple:
        self._fold()
        return (self.shape, self.first_key, self.count, self.u64, self.f64)

    def merge(self, state: tuple) -> None:
        shape, key, count, u64, f64 = state
        if not count:
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


# Worker side: set by the pool initializer in each worker.
_COUNTER = None


def _init_worker(counter) -> None:
    global _COUNTER
    _COUNTER = counter


def _tick(n: int) -> None:
    if _COUNTER is not None and n:
        with _COUNTER.get_lock():
            _COUNTER.value += n


def _sum_lmdb_range(path: str, start: bytes | None, stop: bytes | None, color: bool | None) -> tuple:
    from datakit.db.lmdb_backend import LmdbReader
    acc = _Sum(path)
    since = 0
    with LmdbReader(path) as reader:
        for key, value in reader.scan(start, stop, buffers=True):
            _add_datum(acc, key, value, color)
            since += 1
            if since == 512:
                _tick(since)
                since = 0
    _tick(since)
    return acc.state()


def _sum_values(where: str, items: list[tuple[bytes, bytes]], color: bool | None) -> tuple:
    acc = _Sum(where)
    for key, value in items:
        _add_datum(acc, key, value, color)
    _tick(len(items))
    return acc.state()


def _pool(workers: int, counter):
    from datakit.convert import worker_pool
    return worker_pool(workers, _init_worker, (counter,))


def _counter():
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn").Value("q", 0)


def _wait_all(futures: list[cf.Future], counter, total: int, show: bool) -> list:
    bar = None
    if show:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="rec", desc="mean", file=sys.stderr)
    try:
        pending = set(futures)
        while pending:
            _, pending = cf.wait(pending, timeout=0.25)
            if bar is not None:
                bar.n = counter.value
                bar.refresh()
        return [f.result() for f in futures]
    finally:
        if bar is not None:
            bar.close()


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
                 color: bool | None = None, progress: bool | None = None) -> MeanResult:
    """The per-pixel mean over every record of `db` (any backend).

    `color` decodes encoded records as color (True) / gray (False); None keeps
    each file's own channels, as compute_image_mean does.
    """
    from datakit.convert import default_workers

    started = time.perf_counter()
    workers = workers or default_workers()
    show = sys.stderr.isatty() if progress is None else progress
    reader = open_reader(db, backend)
    where = str(db)
    acc = _Sum(where)
    try:
        n = len(reader)
        if n == 0:
            raise DatabaseError(f"{db}: has no records; nothing to average")
        if reader.backend == "hdf5":
            _sum_hdf5(reader, acc)
            color = None
        else:
            color = _settle_color(reader, color)
        if reader.backend == "hdf5":
            pass
        elif reader.backend == "lmdb" and workers > 1 and n >= 2 * 256:
            parts = min(workers, n // 256)
            ranges = _split_keys(reader, parts)
            reader.close()  # each worker opens its own environment
            counter = _counter()
            with _pool(parts, counter) as pool:
                futures = [pool.submit(_sum_lmdb_range, str(reader.path), a, b, color) for a, b in ranges]
                for state in _wait_all(futures, counter, n, show):
                    acc.merge(state)
        else:
            _sum_sequential(reader, acc, color, workers, n, show)
    finally:
        reader.close()
    mean = acc.total() / acc.count
    return MeanResult(mean.reshape(acc.shape), acc.count, time.perf_counter() - started)


def _settle_color(reader: Reader, color: bool | None) -> bool | None:
    """Native decoding, except that a color first record makes every record color (gray ones promoted)."""
    if color is not None:
        return color
    items = reader.raw_items()
    key, value = next(items)
    items.close()
    where = f"{reader.path}: record {key!r}"
    f = parse_datum_fields(value, where)
    if f.encoded and datum_to_array(f, color=None, where=where).shape[0] == 3:
        return True
    return None


def _sum_hdf5(reader, acc: _Sum) -> None:
    import h5py

    from datakit.db.hdf5_backend import SLAB_BYTES
    for f in reader.files:
        with h5py.File(f, "r") as h5:
            data = h5["data"]
            rows = max(1, SLAB_BYTES // max(1, int(np.prod(data.shape[1:])) * 4))
            for lo in range(0, data.shape[0], rows):
                slab = np.asarray(data[lo:lo + rows])
                if slab.ndim == 2:
                    slab = slab[:, :, None, None]
                acc.add_float_slab(slab, f"{f.name}/{lo:08d}")


def _sum_sequential(reader: Reader, acc: _Sum, color: bool | None, workers: int, n: int, show: bool) -> None:
    """LevelDB (one process may open it) or small LMDBs: read here; decode encoded records in a pool."""
    items = reader.raw_items()
    first = next(items)
    encoded = parse_datum_fields(first[1], f"{reader.path}: record {first[0]!r}").encoded
    _add_datum(acc, first[0], first[1], color)
    def progress_bar():  # made once the pool has forked: tqdm runs a monitor thread
        from tqdm import tqdm
        return tqdm(total=n, initial=1, unit="rec", desc="mean", file=sys.stderr) if show else None

    bar = None
    if encoded and workers > 1:
        counter = _counter()
        with _pool(workers, counter) as pool:
            pending: set[cf.Future] = set()
            for batch in _chunks(items, 64):
                if pending and bar is None:
                    bar = progress_bar()
                if len(pending) >= workers * 4:  # bounded: at most this many batches in memory
                    done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for f in done:
                        acc.merge(f.result())
                    if bar is not None:
                        bar.n = counter.value + 1
                        bar.refresh()
                pending.add(pool.submit(_sum_values, acc.where, batch, color))
            for f in cf.as_completed(pending):
                acc.merge(f.result())
        if bar is not None:
            bar.n = n  # the bar ends at the total, not at the last update
            bar.close()
        return
    bar = progress_bar()
    for i, (key, value) in enumerate(items, start=1):
        _add_datum(acc, key, value, color)
        if bar is not None and i % 256 == 0:
            bar.n = i + 1
            bar.refresh()
    if bar is not None:
        bar.n = n
        bar.close()


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
