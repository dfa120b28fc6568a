"""Conversion as partitions: records a..b of the output into a database of their own (a shard).

The unit an executor maps (datakit.parallel): :func:`convert_partition` is a
pure, picklable function of its arguments that encodes its rows in its own
process and writes them through the backend registry's Writer into
``shard_dir``. Keys keep the global output index (``%08d_path``), so the
shards of one list hold exactly the records, under exactly the keys, of the
single database ``convert()`` writes; merging them is a concatenation in
shard order. The local ``convert()`` keeps its own single-database pipeline
(workers feeding one ordered writer through shared memory), which is faster
on one machine; partitions are for executors that have no shared memory.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datakit.convert import Skipped, caffe_key
from datakit.convert.encode import EncodeSpec, encode_batch
from datakit.db import open_writer
from datakit.errors import ImageError
from datakit.parallel import Executor, run_all

__all__ = ["PartitionRow", "ShardResult", "convert_partition", "convert_partitions", "plan_partitions"]

# (output index, list line, path as listed, label)
PartitionRow = tuple[int, int, str, int]


@dataclass
class ShardResult:
    """What one partition wrote: its records are output indices first_index .. next_index - 1."""

    shard: str
    first_index: int
    next_index: int
    written: int
    skipped: list[Skipped] = field(default_factory=list)
    shapes: list[list[int]] = field(default_factory=list)


def convert_partition(spec: EncodeSpec, backend: str, rows: Sequence[PartitionRow], shard_dir: str, *,
                      list_name: str = "", commit_every: int = 1000, shard_records: int = 1000,
                      strict: bool = False, check_size: bool = False) -> ShardResult:
    """Encode `rows` and write them, in order, into a new database of `backend` at `shard_dir`.

    Unreadable images are skipped (returned in `skipped`) unless `strict`;
    with `check_size`, or a backend that needs one shape, a record of
    another size than the partition's first is an ImageError naming the
    list line (the coordinator compares the partitions' first shapes).
    """
    first = rows[0][0] if rows else 0
    result = ShardResult(shard_dir, first, rows[-1][0] + 1 if rows else first, 0)
    writer = open_writer(backend, shard_dir, shard_records=shard_records)
    one_shape = check_size or writer.one_shape
    array_records = writer.record_kind == "array"
    listed = {index: (line, path, label) for index, line, path, label in rows}
    try:
        batch: list = []
        handed = 0
        for index, payload, shape, error in encode_batch(spec, [(i, p, lab) for i, _, p, lab in rows]):
            line, path, label = listed[index]
            where = f"{list_name}:{line}: {path}"
            if error is not None:
                if strict:
                    raise ImageError(f"{where}: {error} (--strict)")
                result.skipped.append(Skipped(index, line, path, error))
                continue
            assert shape is not None  # every record without an error has its shape
            if result.shapes and list(shape) != result.shapes[0] and one_shape:
                raise ImageError(f"{where}: size {'x'.join(map(str, shape))} differs from the first record's "
                                 f"{'x'.join(map(str, result.shapes[0]))}")
            if list(shape) not in result.shapes and len(result.shapes) < 100:
                result.shapes.append(list(shape))
            batch.append((payload, label) if array_records else (caffe_key(index, path), payload))
            result.written += 1
            if len(batch) >= writer.batch_limit(handed, commit_every):
                writer.write(batch)
                handed += len(batch)
                batch = []
        if batch:
            writer.write(batch)
        writer.sync()
        writer.finish(shard_dir)
    finally:
        writer.close()
    return result


def plan_partitions(count: int, per_partition: int) -> list[tuple[int, int]]:
    """[a, b) ranges of at most `per_partition` output indices covering 0 .. count - 1."""
    if per_partition <= 0:
        raise ValueError(f"per_partition must be positive, not {per_partition}")
    return [(a, min(count, a + per_partition)) for a in range(0, count, per_partition)]


def convert_partitions(executor: Executor, spec: EncodeSpec, backend: str, rows: Sequence[PartitionRow],
                       out_dir: str | Path, *, per_partition: int = 1000, **kwargs: Any) -> list[ShardResult]:
    """Run convert_partition over `rows` (consecutive output indices) on `executor`: one shard each,
    ``out_dir/shard-NNNNN``; results in shard order (the first failure cancels the rest and is raised)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(spec, backend, list(rows[a:b]), str(out / f"shard-{k:05d}"))
             for k, (a, b) in enumerate(plan_partitions(len(rows), per_partition))]
    return run_all(executor, functools.partial(convert_partition, **kwargs), tasks)
