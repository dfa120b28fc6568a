"""Image list -> LMDB / LevelDB / HDF5 (any registered backend): Caffe's ``convert_imageset``, parallel, resumable.

What matches convert_imageset byte for byte: the keys ``%08d_<path as listed>``
(the index is the record's position in the output order, so a skipped image
leaves a gap exactly as in Caffe), the Datum bytes (raw C x H x W BGR pixels,
or with ``--encoded`` the file bytes unchanged when no resize is asked and the
file's extension matches the encoding, otherwise ``cv::imencode``), the
resize (cv::resize INTER_LINEAR, only when both sizes are > 0) and ``--gray``.

What differs on purpose:

* ``--shuffle`` uses our own seeded shuffle (Python's ``random.Random(seed)``),
  not ``std::random_shuffle``: the order is repeatable with ``--seed`` but not
  the order Caffe would pick.
* Decoding runs in worker processes; one writer puts the records in order,
  in transactions of ``--commit-every`` records (Caffe's 1000) or 8 MB.
* Durability at checkpoints, not at every transaction (see
  :mod:`datakit.convert.pipeline`); the progress file never claims a record
  that is not on disk, so ``--resume`` after any interruption gives the same
  database an uninterrupted run would have written.
* An LMDB's or HDF5 shard's pages leave the page cache once they are on disk
  (datakit.db.pagecache), so a conversion's page cache stays small.
* The database is built at ``DB.incomplete`` and renamed to ``DB`` at the
  end (:mod:`datakit.convert.workdir`).
* Unreadable images are skipped with a warning naming list line and file
  (Caffe logs and skips too); ``--strict`` makes them fatal. With
  ``--check-size`` a record of another size is fatal, as in Caffe.

The package: ``options`` (ConvertOptions, ConvertSummary), ``encode`` (the
pure per-image encoder), ``workdir`` (resume / overwrite / install),
``pipeline`` (workers -> ordered writer -> checkpoints) and ``partition``
(records a..b into a shard of their own, for an executor).
"""

from __future__ import annotations

import os
import random
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from datakit.convert.options import ENCODE_TYPES, ConvertOptions, ConvertSummary, Skipped
from datakit.errors import ConfigError, DatabaseError, DiskFull, ImageError, ListError
from datakit.warncap import WarningCap, missing_under_root

if TYPE_CHECKING:
    from datakit.convert.pipeline import PipelineSettings
    from datakit.db.base import Writer
    from datakit.convert.workdir import WorkDir
    from datakit.imagelist import ListEntry

__all__ = ["ENCODE_TYPES", "ConvertInterrupted", "ConvertOptions", "ConvertSummary", "NothingWritten", "Skipped",
           "WorkerDied", "caffe_key", "convert"]


def caffe_key(index: int, path: str) -> bytes:
    """convert_imageset's key: the 8-digit position in the output order, '_', the path as listed."""
    return f"{index:08d}_{path}".encode()


class NothingWritten(DatabaseError):
    """Every listed image was skipped: an empty database would only hide the mistake."""


class WorkerDied(DatabaseError):
    """A decoding worker process died (killed from outside, the kernel's out-of-memory killer, a crash in a
    decoder); the records finished before it are kept for --resume."""


class ConvertInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM turned into it) stopped a conversion; what was saved stays for --resume.

    `written`: records the progress file claims (all on disk); `partial`: the
    work folder holding them. A first Ctrl-C / SIGTERM stops after the record
    being handled and saves every record so far; `at_once`: a second one
    stopped the conversion wherever it was, so only the last checkpoint is
    kept (the message says so).
    """

    def __init__(self, written: int, partial: Path, overwrite: bool = False, at_once: bool = False,
                 unfinished_shard: int = 0) -> None:
        # After --overwrite, "the same command with --resume" would be refused (the two contradict).
        how = "with --resume in place of --overwrite" if overwrite else "with --resume"
        #: said after the folder when an HDF5 shard was left unfinished (its records are not on disk for good)
        self.note = (f" (HDF5 keeps whole --hdf5-chunk files: the {unfinished_shard} records of the unfinished one "
                     "are redone)") if unfinished_shard else ""
        super().__init__(f"{self.how_stopped('interrupted', at_once)}; {written} records are saved in {partial}"
                         f"{self.note}: rerun the same command {how} to finish")
        self.written = written
        self.partial = partial
        self.overwrite = overwrite
        self.at_once = at_once

    @staticmethod
    def how_stopped(what: str, at_once: bool) -> str:
        """`what` ("interrupted", "stopped by SIGTERM"), saying so when a second signal stopped at once."""
        return f"{what} at once by a second signal (the last checkpoint is kept)" if at_once else what


def _stderr_warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def read_inputs(root: Path, list_path: Path, final: Path, allow_absolute: bool,
                warn: Callable[[str], None]) -> tuple[dict[str, str], list[ListEntry]]:
    """The checked inputs of a conversion: the fingerprint that resume compares, and the list's entries.

    Called before the work folder is touched, by the local and the sharded conversion alike, so that a
    missing root, a missing, bad or empty list changes nothing on disk (with --overwrite neither the
    old database nor interrupted work is removed).
    """
    from datakit.atomic import sha256_file
    if not root.is_dir():
        raise ConfigError(f"{root}: image root folder not found")
    if not list_path.is_file():
        raise ListError(f"{list_path}: list file not found")
    fingerprint = {"list": str(list_path.resolve()), "list_sha256": sha256_file(list_path),
                   "root": str(root.resolve())}
    entries = read_entries(list_path, allow_absolute, warn)
    if not entries:
        raise ListError(f"{list_path}: lists no images (the file is empty or holds only blank lines); "
                        "nothing was converted" + (f" and {final} was left as it was" if final.exists() else ""))
    return fingerprint, entries


def read_entries(list_path: Path, allow_absolute: bool, warn: Callable[[str], None]) -> list[ListEntry]:
    """The whole list, checked by imagelist.check_list: bad syntax or an escaping path is fatal (the first
    is raised); duplicates are warnings, as Caffe accepts them, and so are labels that are not 0..K-1."""
    from datakit.imagelist import WARNING, check_list
    check = check_list(list_path, allow_absolute=allow_absolute, allow_label_gaps=True,
                       severity={"duplicate": WARNING})
    check.raise_if_problems()
    for message in check.warnings:
        warn(f"{message}; converting both")
    labels = sorted(check.labels)
    if labels and (labels[0] != 0 or labels[-1] != len(labels) - 1):
        warn(f"{list_path}: labels are not exactly 0..K-1 (found {len(labels)} values from {labels[0]} to "
             f"{labels[-1]}); a classifier needs num_output >= {labels[-1] + 1}")
    return check.entries


def _check_resumed_count(writer: Writer, workdir: WorkDir) -> None:
    """Refuse to build on an unfinished database that no longer holds what its progress file claims."""
    have, claimed = writer.count(), int(workdir.state.get("written", 0))
    if have is not None and have != claimed:
        raise DatabaseError(f"{workdir.path}: holds {have} records where its progress file says {claimed}: it "
                            "was changed outside this conversion (a data file removed, or another run writing "
                            "into it); start over with --overwrite")


def convert(root: str | os.PathLike, list_path: str | os.PathLike, db_path: str | os.PathLike,
            options: ConvertOptions | None = None, *, warn: Callable[[str], None] = _stderr_warn,
            settings: PipelineSettings | None = None,
            on_progress_saved: Callable[[dict], None] | None = None) -> ConvertSummary:
    """Convert the images of a Caffe list under `root` into the database `db_path`.

    Returns the summary; raises DatakitError subclasses with one-line messages
    (list problems before any work starts; with --strict, the first bad image).
    `settings` tunes how records travel from the workers (PipelineSettings);
    `on_progress_saved(state)` is called after every save of the progress file.
    """
    from datakit.convert.workdir import WorkDir

    opts = options or ConvertOptions()
    opts.validate()
    started = time.perf_counter()
    root, list_path, final = Path(root), Path(list_path), Path(db_path)
    list_warnings: list[str] = []
    fingerprint, entries = read_inputs(root, list_path, final, opts.allow_absolute, list_warnings.append)
    workdir = WorkDir(final, on_save=on_progress_saved)
    try:
        return _convert_into(workdir, root, list_path, opts, fingerprint, entries, list_warnings, warn, settings,
                             started)
    finally:
        workdir.release()


def _convert_into(workdir: WorkDir, root: Path, list_path: Path, opts: ConvertOptions, fingerprint: dict,
                  entries: list, list_warnings: list[str], warn: Callable[[str], None],
                  settings: PipelineSettings | None, started: float) -> ConvertSummary:
    """``convert``'s work once its inputs are read; ``workdir.open`` takes the output's lock."""
    from datakit.convert.encode import EncodeSpec
    from datakit.convert.pipeline import PipelineSettings, write_records
    from datakit.convert.workdir import RESUME_KEYS, AlreadyComplete, check_resumable
    from datakit.db import BACKENDS
    from datakit.deferred_stop import StoppedAtOnce

    final = workdir.final
    try:
        prior = workdir.open(resume=opts.resume, overwrite=opts.overwrite)
    except AlreadyComplete as done:
        check_resumable(done.progress, opts, fingerprint, final, finished=True)
        return ConvertSummary.from_progress(str(final), done.progress)
    list_cap = WarningCap(warn, "list warnings", where_all="the summary's warnings and --report")
    for message in list_warnings:
        list_cap(message)
    list_cap.finish()
    seed = opts.seed
    if prior is not None:
        check_resumable(prior, opts, fingerprint, workdir.path)
        seed = prior["options"]["seed"]
    elif opts.shuffle and seed is None:
        seed = secrets.randbits(32)
    order = list(range(len(entries)))
    if opts.shuffle:
        random.Random(seed).shuffle(order)

    if prior is None:
        recorded = {k: getattr(opts, k) for k in RESUME_KEYS} | {"seed": seed}
        workdir.start({"status": "incomplete", "tool": "datakit convert", "options": recorded, **fingerprint,
                       "listed": len(entries), "next_index": 0, "written": 0, "shards": 0, "shapes": [],
                       "skipped": []})
    else:
        workdir.continue_from(prior)
    start = int(workdir.state["next_index"])
    backend = BACKENDS[opts.backend]
    spec = EncodeSpec(str(root), backend.record_kind, opts.resize_height, opts.resize_width, opts.gray,
                      opts.encoded, opts.encode_type.lower(), opts.allow_absolute, opts.max_pixels)
    # a list shorter than a shard makes one shard of its size either way: reserving a whole --hdf5-chunk
    # of disk for it refused small jobs on a nearly full disk
    writer = backend.open_writer(workdir.path, shard_records=min(opts.hdf5_chunk, max(1, len(entries))))
    skip_cap = WarningCap(warn, "skipped images", where_all="the summary's skipped list and --report")
    how = "--resume in place of --overwrite" if opts.overwrite else "--resume"  # what a stopped run is rerun with
    try:
        writer.resume(workdir.state)
        _check_resumed_count(writer, workdir)
        summary = write_records(entries, order, opts, spec, list_path, writer, workdir, skip_cap,
                                settings or PipelineSettings())
        skip_cap.finish()
        summary.warnings = list_cap.messages
        missing = sum(1 for s in summary.skipped if s.reason.startswith("file not found"))
        wrong_root = missing_under_root(missing, len(entries), root, "the image root")
        if summary.written == 0 and entries:
            raise NothingWritten(f"{list_path}: none of its {len(entries)} images could be read, so no "
                                 f"database was written (" + (wrong_root or
                                 f"list paths are relative to the root {root}") + ")")
        if wrong_root is not None:
            warn(wrong_root)
        writer.finish(final)
    except NothingWritten:
        writer.close()
        workdir.discard()
        raise
    except ImageError as bad:  # --strict / --check-size / one size for HDF5: the work so far stays
        writer.close()
        raise ImageError(f"{bad}; the {int(workdir.state.get('written', 0))} records saved before it are kept in "
                         f"{workdir.path}: replace or remove that image and rerun with {how}, or change the "
                         "options and rerun with --overwrite to start over") from None
    except WorkerDied as died:
        writer.close()
        raise WorkerDied(f"{died}; the {int(workdir.state.get('written', 0))} records saved so far are kept in "
                         f"{workdir.path}: rerun the same command with {how} (with fewer --workers if memory "
                         "ran out)") from None
    except DiskFull as full:
        writer.close()
        raise DiskFull(f"{full}; the {int(workdir.state.get('written', 0))} records saved so far are kept in "
                       f"{workdir.path}: free some space, then rerun the same command with {how}") from None
    except KeyboardInterrupt as stop:  # the pipeline has saved every finished record, unless stopped at once
        at_once = isinstance(stop, StoppedAtOnce)
        unfinished = 0 if writer.syncs or at_once else int(getattr(writer, "rows", 0))
        writer.close()
        raise ConvertInterrupted(int(workdir.state.get("written", 0)), workdir.path, opts.overwrite,
                                 at_once=at_once, unfinished_shard=unfinished) from None
    except BaseException:
        writer.close()
        raise
    writer.close()
    summary.db, summary.seed, summary.resumed_at = str(final), seed, start or None
    summary.seconds = time.perf_counter() - started
    workdir.save(status="complete", next_index=len(entries), written=summary.written, shapes=summary.shapes,
                 skipped=[asdict(s) for s in summary.skipped], **writer.progress_state(),
                 summary={"listed": summary.listed, "written": summary.written, "shapes": summary.shapes,
                          "seconds": round(summary.seconds, 3)})
    workdir.install()
    return summary
