"""Convert on an executor (a Dask cluster): one shard per partition, read back as one database.

``convert_sharded`` is ``convert()`` for workers that share a filesystem but
no memory. The list is read, checked and (with ``--shuffle``) ordered here,
exactly as ``convert()`` does; output indices ``a .. b - 1`` become one task,
:func:`write_shard`, which encodes them on a worker and writes
``DB.incomplete/shard-NNNNN/`` with datakit.convert.partition's
``convert_partition`` (same Datum bytes, same ``%08d_path`` keys as a local
run). When every shard is there, ``shards.json`` is written and
``DB.incomplete`` is renamed to ``DB`` (datakit.convert.workdir, as locally).

Atomic shards: a task builds its shard in a hidden temporary folder, writes
its result (``shard.json``: counts, key range, skipped images) inside, and
renames the folder to ``shard-NNNNN`` as its last step. A shard folder is
therefore complete or absent; a task rerun after a lost worker builds a fresh
temporary folder, and a late duplicate that finds the shard already there
discards its own copy. ``--resume`` (after Ctrl-C, a failure, a lost client)
keeps every finished shard and submits only the others.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from datakit.atomic import fsync_dir, write_text_atomic
from datakit.convert import ConvertInterrupted, NothingWritten, caffe_key, read_inputs
from datakit.convert.encode import EncodeSpec
from datakit.convert.options import ConvertOptions, ConvertSummary, Skipped
from datakit.convert.partition import PartitionRow, convert_partition, plan_partitions
from datakit.convert.workdir import RESUME_KEYS, AlreadyComplete, WorkDir, check_resumable
from datakit.db import BACKENDS
from datakit.db.sharded_backend import FORMAT, SHARDS_NAME, shard_name
from datakit.errors import ConfigError, DatabaseError, DatakitError, ImageError
from datakit.parallel import Executor, opencv_one_thread
from datakit.warncap import WarningCap, missing_under_root
from datakit.workerpool import keep_freed_memory

__all__ = ["SHARD_RESULT", "convert_sharded", "write_shard"]

SHARD_RESULT = "shard.json"


def _stderr_warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def write_shard(spec: EncodeSpec, backend: str, rows: Sequence[PartitionRow], work_dir: str, k: int, *,
                list_name: str = "", commit_every: int = 1000, strict: bool = False,
                check_size: bool = False) -> dict:
    """Write shard `k` of `work_dir` from `rows` (atomically, see the module docstring); its shard.json.

    Idempotent: a shard already in place is not written again, its recorded
    result is returned.
    """
    final = Path(work_dir) / shard_name(k)
    done = final / SHARD_RESULT
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    tmp = Path(work_dir) / f".{shard_name(k)}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    # As the local decoding processes: image buffers from the heap, freed memory kept (a Dask nanny sets
    # MALLOC_TRIM_THRESHOLD_=64 KiB, which made every Datum an mmap/munmap pair and the partition ~2x slower)
    keep_freed_memory()
    try:
        with opencv_one_thread():  # one core per task, as a local decoding process: a worker runs nthreads at once
            result = convert_partition(spec, backend, rows, str(tmp), list_name=list_name,
                                       commit_every=commit_every, strict=strict, check_size=check_size)
        skipped = {s.index for s in result.skipped}
        kept = [(i, path) for i, _, path, _ in rows if i not in skipped]
        info = {"name": final.name, "first_index": result.first_index, "next_index": result.next_index,
                "count": result.written,
                "first_key": caffe_key(*kept[0]).decode() if kept else "",
                "last_key": caffe_key(*kept[-1]).decode() if kept else "",
                "shapes": result.shapes, "skipped": [asdict(s) for s in result.skipped]}
        write_text_atomic(tmp / SHARD_RESULT, json.dumps(info, indent=1) + "\n")
        fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if done.is_file():  # a duplicate of this task finished first: keep its shard
                return json.loads(done.read_text(encoding="utf-8"))
            raise
        fsync_dir(work_dir)
        return info
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_temporaries(work: Path) -> None:
    """Temporary shard folders of tasks whose worker was killed (their partition was rerun elsewhere)."""
    for p in work.glob(".shard-*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def _finished_shards(work: Path) -> dict[int, dict]:
    """The shards already in place (complete by construction); temporaries of killed tasks are removed."""
    _remove_temporaries(work)
    return _shards_in_place(work)


def _shards_in_place(work: Path) -> dict[int, dict]:
    """The shard results of `work`'s complete shards, touching nothing (a task may still be writing)."""
    found: dict[int, dict] = {}
    for p in work.iterdir():
        if p.name.startswith("shard-") and (p / SHARD_RESULT).is_file():
            found[int(p.name[len("shard-"):])] = json.loads((p / SHARD_RESULT).read_text(encoding="utf-8"))
    return found


def convert_sharded(root: str | os.PathLike, list_path: str | os.PathLike, db_path: str | os.PathLike,
                    options: ConvertOptions | None, executor: Executor, *, partition_size: int = 5000,
                    warn: Callable[[str], None] = _stderr_warn) -> ConvertSummary:
    """Convert the list into a sharded database at `db_path`, one task per `partition_size` records.

    Same checks, messages, resume and overwrite rules as ``convert()``. A
    partition that fails (after the executor's retries) cancels the rest
    and raises one DatabaseError naming it; its finished siblings stay for
    ``--resume``.
    """
    opts = options or ConvertOptions()
    opts.validate()
    if BACKENDS[opts.backend].record_kind != "datum":
        raise ConfigError(f"--backend {opts.backend}: a cluster writes shards of Datums (lmdb or leveldb)")
    if partition_size < 1:
        raise ConfigError(f"--partition-size {partition_size}: must be positive")
    started = time.perf_counter()
    root, list_path, final = Path(root), Path(list_path), Path(db_path)
    list_warnings: list[str] = []
    fingerprint, entries = read_inputs(root, list_path, final, opts.allow_absolute, list_warnings.append)
    workdir = WorkDir(final)
    try:  # workdir.open takes the output's lock; released however the conversion ends
        try:
            prior = workdir.open(resume=opts.resume, overwrite=opts.overwrite)
        except AlreadyComplete as complete:
            check_resumable(complete.progress, opts, fingerprint, final, finished=True)
            return ConvertSummary.from_progress(str(final), complete.progress)
        # as the local conversion: the first few list warnings of a careless list, then a count
        list_cap = WarningCap(warn, "list warnings", where_all="the summary's warnings and --report")
        for message in list_warnings:
            list_cap(message)
        list_cap.finish()
        seed = opts.seed
        if prior is not None:
            check_resumable(prior, opts, fingerprint, workdir.path)
            if "sharded" not in prior:
                raise ConfigError(f"{workdir.path}: started by a local conversion; resume it without "
                                  "--scheduler/--cluster")
            seed = prior["options"]["seed"]
            partition_size = int(prior["sharded"]["partition_size"])
            workdir.continue_from(prior)
        else:
            if opts.shuffle and seed is None:
                seed = secrets.randbits(32)
            recorded = {k: getattr(opts, k) for k in RESUME_KEYS} | {"seed": seed}
            workdir.start({"status": "incomplete", "tool": "datakit convert", "options": recorded, **fingerprint,
                           "listed": len(entries), "next_index": 0, "written": 0, "shards": 0, "shapes": [],
                           "skipped": [], "sharded": {"partition_size": partition_size}})
        order = list(range(len(entries)))
        if opts.shuffle:
            random.Random(seed).shuffle(order)
        # absolute: a Dask worker started in another folder resolves a relative ROOT against its own
        spec = EncodeSpec(os.path.abspath(root), BACKENDS[opts.backend].record_kind, opts.resize_height, opts.resize_width,
                          opts.gray, opts.encoded, opts.encode_type.lower(), opts.allow_absolute, opts.max_pixels)
        rows = [(i, entries[order[i]].line, entries[order[i]].path, entries[order[i]].label) for i in range(len(order))]
        ranges = plan_partitions(len(rows), partition_size)
        work = workdir.path.resolve()
        done = _finished_shards(work)
        resumed_at = sum(int(d["count"]) for d in done.values()) or None  # records kept from before
        kwargs = dict(list_name=str(list_path), commit_every=opts.commit_every, strict=opts.strict,
                      check_size=opts.check_size)
        futures: dict = {}
        try:  # submitting too: a Ctrl-C then is the same stop
            for k, (a, b) in enumerate(ranges):
                if k not in done:
                    futures[executor.submit(write_shard, spec, opts.backend, rows[a:b], str(work), k, **kwargs)] = k
            for future in executor.as_completed(list(futures)):
                k = futures[future]
                try:
                    done[k] = future.result()
                except DatakitError:
                    raise  # a bad image under --strict / --check-size: already names its list line
                except Exception as err:  # noqa: BLE001 - one line naming the partition
                    a, b = ranges[k]
                    raise DatabaseError(f"{list_path}: partition {k} ({shard_name(k)}, list records {a}..{b - 1}) "
                                        f"failed on {executor.name}: {type(err).__name__}: {err}; finished shards "
                                        "are kept: rerun with --resume") from None
        except KeyboardInterrupt:
            executor.cancel(list(futures))
            # every shard in place counts, collected or not: --resume keeps them all (tasks still running
            # elsewhere may add more); the results read so far could be fewer
            kept = _shards_in_place(work)
            raise ConvertInterrupted(sum(int(d["count"]) for d in kept.values()), workdir.path,
                                     opts.overwrite) from None
        except BaseException:
            executor.cancel(list(futures))
            raise
        summary = _finish(workdir, [done[k] for k in range(len(ranges))], opts, entries, list_path, root, seed,
                          started, resumed_at, warn)
        summary.warnings = list_cap.messages
        return summary
    finally:
        workdir.release()


def _finish(workdir: WorkDir, shards: list[dict], opts: ConvertOptions, entries: list, list_path: Path,
            root: Path, seed: int | None, started: float, resumed_at: int | None,
            warn: Callable[[str], None]) -> ConvertSummary:
    """Check the shards agree, warn about skipped images, write shards.json and install the database."""
    written = sum(int(s["count"]) for s in shards)
    skipped = [Skipped(**s) for shard in shards for s in shard["skipped"]]
    shapes: list[list[int]] = []
    for shard in shards:
        for shape in shard["shapes"]:
            if shape not in shapes and len(shapes) < 100:
                shapes.append(shape)
    if len(shapes) > 1 and (opts.check_size or BACKENDS[opts.backend].record_kind == "array"):
        first = next(s for s in shards if s["shapes"] and s["shapes"][0] != shapes[0])
        raise ImageError(f"{list_path}: records of {first['name']} are {'x'.join(map(str, first['shapes'][0]))}, "
                         f"the first record is {'x'.join(map(str, shapes[0]))} (--check-size)")
    skip_cap = WarningCap(warn, "skipped images", where_all="the summary's skipped list and --report")
    for s in skipped:   # the local conversion's lines and limit (the CLI's closing count relies on it)
        skip_cap(f"{list_path}:{s.line}: {s.path}: {s.reason}; skipped")
    skip_cap.finish()
    wrong_root = missing_under_root(sum(1 for s in skipped if s.reason.startswith("file not found")),
                                    len(entries), root, "the image root")
    if written == 0 and entries:
        workdir.discard()
        raise NothingWritten(f"{list_path}: none of its {len(entries)} images could be read, so no "
                             f"database was written (" + (wrong_root or
                             f"list paths are relative to the root {root}") + ")")
    if wrong_root is not None:
        warn(wrong_root)
    index = {"format": FORMAT, "version": 1, "backend": opts.backend, "count": written,
             "shards": [{k: s[k] for k in ("name", "first_index", "next_index", "count", "first_key", "last_key")}
                        for s in shards]}
    _remove_temporaries(workdir.path)
    write_text_atomic(workdir.path / SHARDS_NAME, json.dumps(index, indent=1) + "\n")
    summary = ConvertSummary(str(workdir.final), "sharded", len(entries), written, skipped,
                             time.perf_counter() - started, shapes, seed, resumed_at)
    workdir.save(status="complete", next_index=len(entries), written=written, shapes=shapes,
                 skipped=[asdict(s) for s in skipped], shards=len(shards),
                 summary={"listed": summary.listed, "written": written, "shapes": shapes,
                          "seconds": round(summary.seconds, 3)})
    workdir.install()
    return summary
