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

The package: ``sums`` (the exact, mergeable sum of records), ``partitions`` (how the
records are spread over workers), and here ``compute_mean`` (which path a database
takes) and the mean files.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from datakit.formats.datum import datum_to_array, parse_datum_fields
from datakit.db import open_reader
from datakit.errors import ConfigError, DatabaseError
from datakit.formats.blobproto import read_mean, write_mean
from datakit.mean.partitions import sum_partitions, sum_range, sum_values
from datakit.mean.sums import RecordSum, SumState
from datakit.report import progress_bar

if TYPE_CHECKING:
    from datakit.db.base import Reader
    from datakit.parallel import Executor

__all__ = ["MeanResult", "SumState", "compute_mean", "convert_mean", "mean_output_paths", "save_mean", "sum_range",
           "sum_values"]

# Below this many bytes of pixels a database is summed in this process: starting a pool (forking,
# each worker opening the database, the partial sums coming back) costs more than a second core saves.
POOL_MIN_BYTES = 1 << 30


@dataclass
class MeanResult:
    """The mean image (float64 C x H x W) over `count` records."""

    mean: np.ndarray
    count: int
    seconds: float = 0.0

    @property
    def per_channel(self) -> np.ndarray:
        return self.mean.reshape(self.mean.shape[0], -1).mean(axis=1)


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
    acc = RecordSum(str(db))
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
            sum_partitions(reader, acc, color, workers, n, progress, executor)
    finally:
        reader.close()
    mean = acc.total() / acc.count
    return MeanResult(mean.reshape(acc.shape), acc.count, time.perf_counter() - started)


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
