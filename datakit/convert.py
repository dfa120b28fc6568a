"""Image list -> LMDB / LevelDB / HDF5: Caffe's ``convert_imageset``, in parallel and resumable.

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
* Decoding and resizing run in worker processes that hand finished Datums
  to the parent through shared memory; one writer puts them in order, in
  transactions of ``--commit-every`` records (Caffe's 1000) or 8 MB,
  whichever comes first.
* Durability at checkpoints, not at every transaction: convert_imageset
  flushes each transaction to disk; we commit without flushing and, every
  ``--checkpoint-every`` x ``--commit-every`` records (4 x 1000) or 64 MB,
  whichever comes first, flush the database to disk and then save the
  progress file. Flushing every transaction cost about a fifth of the CPU
  that decoding needs. The guarantee is unchanged: the progress
  file never claims a record that is not on disk, so a killed process (or a
  crashed machine) resumes from the last checkpoint; records committed after
  it are removed and redone by ``--resume``. The finished database is flushed
  before it is renamed into place.
* An LMDB's or HDF5 shard's pages leave the page cache once they are on
  disk (a streaming writer's "no cache", datakit.db.pagecache): a
  conversion's page cache stays at a few batches however large the
  database, the source images stay cached, and a reader right after the
  conversion reads the database from disk.
* The database is built at ``DB.incomplete`` and renamed to ``DB`` at the end,
  so an interruption never leaves a database that looks whole, and
  ``--resume`` finishes it with the same bytes an uninterrupted run would
  have written.
* Unreadable images are skipped with a warning naming list line and file
  (Caffe logs and skips too); ``--strict`` makes them fatal. With
  ``--check-size`` a record of another size is fatal, as in Caffe.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import hashlib
import json
import mmap
import multiprocessing
import os
import queue
import random
import secrets
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from datakit.atomic import write_text_atomic
from datakit.datum import encode_datum, encode_datum_bytes, raw_datum_parts
from datakit.db import BACKENDS, PROGRESS_NAME, detect_backend, incomplete_path, read_progress
from datakit.errors import ConfigError, DatabaseError, ImageError, ListError
from datakit.images import DEFAULT_MAX_PIXELS, decode_image, encode_image, hwc_to_chw, resize_exact
from datakit.imagelist import ListEntry, iter_list, safe_join

__all__ = ["ConvertOptions", "ConvertSummary", "Skipped", "convert", "caffe_key", "default_workers"]

ENCODE_TYPES = ("jpg", "jpeg", "png", "bmp")
# Options that decide the bytes written; a resumed run must use the same ones.
_RESUME_KEYS = ("backend", "resize_height", "resize_width", "gray", "shuffle", "seed", "encoded",
                "encode_type", "check_size", "hdf5_chunk", "allow_absolute")


def default_workers() -> int:
    """All the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _keep_freed_memory() -> None:
    """glibc: serve every image buffer from the heap and keep freed memory (no munmap, no trim).

    Each decode allocates a fresh ~0.6 MB image and each resize a ~0.2 MB one;
    by default glibc maps big blocks afresh and returns freed heap tops to
    the kernel, so every image paid page faults and the kernel's zeroing.
    A worker's peak is a few images, so keeping freed memory costs little.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # noqa: PLC0415 - Linux-only, once per worker
    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL("libc.so.6").mallopt
        mallopt(-3, 64 << 20)   # M_MMAP_THRESHOLD: blocks under 64 MB come from the heap
        mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: return a free heap top only above 256 MB


def _start_worker(fresh: bool, initializer: Callable | None, initargs: tuple) -> None:
    # Ctrl-C is the main process's to handle (it saves progress and stops the pool); a worker
    # that also raised KeyboardInterrupt would only print a traceback per process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _keep_freed_memory()
    if fresh:  # a spawned interpreter: safe to configure OpenCV here
        cv2.setNumThreads(1)
    if initializer is not None:
        initializer(*initargs)


@contextlib.contextmanager
def worker_pool(workers: int, initializer: Callable | None = None,
                initargs: tuple = ()) -> Iterator[cf.ProcessPoolExecutor]:
    """A process pool whose workers each run OpenCV on one thread (the pool is the parallelism).

    On Linux workers are forked, so that nothing of the caller's program is
    re-imported (scripts without a main guard, notebooks, stdin all work).
    Calling cv2.setNumThreads in a forked child can deadlock on the parent's
    thread pool, so instead this process runs OpenCV single-threaded while
    the pool lives and the children inherit that setting.
    """
    fork = sys.platform.startswith("linux")
    ctx = multiprocessing.get_context("fork" if fork else "spawn")
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_start_worker,
                                    initargs=(not fork, initializer, initargs)) as pool:
            yield pool
    finally:
        cv2.setNumThreads(previous)


def caffe_key(index: int, path: str) -> bytes:
    """convert_imageset's key: the 8-digit position in the output order, '_', the path as listed."""
    return f"{index:08d}_{path}".encode()


@dataclass
class ConvertOptions:
    """convert_imageset's flags (same meanings) plus ours for speed and safety."""

    backend: str = "lmdb"
    resize_height: int = 0
    resize_width: int = 0
    gray: bool = False
    shuffle: bool = False
    seed: int | None = None
    encoded: bool = False
    encode_type: str = ""
    check_size: bool = False
    hdf5_chunk: int = 1000
    allow_absolute: bool = False
    workers: int = 0            # 0 = all cores
    commit_every: int = 1000    # records per transaction, as convert_imageset...
    commit_bytes: int = 8 << 20  # ...or fewer when they add up to this much (bounds the memory in flight)
    checkpoint_every: int = 4   # a checkpoint (flush to disk, then save the resume point) every
    checkpoint_bytes: int = 64 << 20  # checkpoint_every * commit_every records or this much, if sooner
    strict: bool = False
    resume: bool = False
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool | None = None  # None: a progress bar when stderr is a terminal

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.resize_height < 0 or self.resize_width < 0:
            raise ConfigError("--resize-height/--resize-width must be >= 0 (0 keeps the size)")
        if (self.resize_height > 0) != (self.resize_width > 0):
            raise ConfigError("give both --resize-height and --resize-width (convert_imageset resizes only "
                              "when both are > 0 and would silently ignore one alone)")
        if self.encode_type and not self.encoded:
            raise ConfigError("--encode-type needs --encoded")
        if self.encode_type and self.encode_type.lower() not in ENCODE_TYPES:
            raise ConfigError(f"--encode-type {self.encode_type!r}: expected one of {', '.join(ENCODE_TYPES)}")
        if self.encoded and self.backend == "hdf5":
            raise ConfigError("--encoded is for lmdb/leveldb; HDF5 stores float pixels")
        if self.commit_every <= 0 or self.hdf5_chunk <= 0 or self.checkpoint_every <= 0:
            raise ConfigError("--commit-every, --checkpoint-every and --hdf5-chunk must be positive")
        if self.workers < 0:
            raise ConfigError("--workers must be >= 0 (0 = all cores)")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: choose one")


@dataclass
class Skipped:
    """One list entry that was not converted, and why."""

    index: int
    line: int
    path: str
    reason: str


@dataclass
class ConvertSummary:
    db: str
    backend: str
    listed: int
    written: int
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    shapes: list[list[int]] = field(default_factory=list)
    seed: int | None = None
    resumed_at: int | None = None
    already_complete: bool = False

    def line(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.shapes[:3]) + (" ..." if len(self.shapes) > 3 else "")
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        resumed = f", resumed at record {self.resumed_at}" if self.resumed_at else ""
        return (f"{self.db}: {self.written} records written ({self.backend}"
                f"{', ' + shapes if shapes else ''}), {len(self.skipped)} skipped of {self.listed} listed, "
                f"{self.seconds:.1f} s ({rate:.0f} images/s){resumed}")

    def to_json(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------- workers --

@dataclass(frozen=True)
class _Job:
    """Everything a worker needs, sent once when the pool starts."""

    root: str
    backend: str
    resize_height: int
    resize_width: int
    gray: bool
    encoded: bool
    encode_type: str
    allow_absolute: bool
    max_pixels: int


_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _JOB
    _JOB = job


def _same_ext(path: str, enc: str) -> bool:
    """Caffe's matchExt: case-insensitive, and 'jpg' also matches '.jpeg'."""
    ext = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    enc = enc.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


@dataclass(frozen=True, slots=True)
class _RawDatum:
    """A raw Datum not serialized yet: the worker writes it straight into shared memory when it can."""

    image: np.ndarray  # H x W x C uint8, as OpenCV gives it
    label: int

    def parts(self) -> tuple[bytes, bytes, int]:
        c, h, w = _chw(self.image)
        prefix, suffix = raw_datum_parts(c, h, w, self.label)
        return prefix, suffix, len(prefix) + c * h * w + len(suffix)

    def to_bytes(self) -> bytes:
        return encode_datum(hwc_to_chw(self.image), self.label)


def _plainly_inside(path: str) -> bool:
    """True for a relative path that cannot leave its root: no leading slash, no '..', no drive colon.

    A string test that runs for every record (pathlib's parsing in
    safe_join cost 45 us an image); anything it does not accept goes through
    safe_join, which decides and words the error.
    """
    return bool(path) and path[0] not in "/\\" and ".." not in path and ":" not in path


def _chw(img: np.ndarray) -> tuple[int, int, int]:
    return (img.shape[2] if img.ndim == 3 else 1), img.shape[0], img.shape[1]


def _convert_one(job: _Job, path: str, label: int) -> tuple[object, tuple[int, int, int]]:
    """One list entry -> (Datum: bytes or _RawDatum; or C x H x W uint8 for HDF5; its shape). Raises ImageError."""
    if os.path.isabs(path) and job.allow_absolute:
        full = Path(path)
    else:
        try:
            full = os.path.join(job.root, path) if _plainly_inside(path) else safe_join(job.root, path)
        except ListError as err:
            raise ImageError(str(err)) from None
    try:
        with open(full, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ImageError(f"file not found: {full}") from None
    except OSError as err:
        raise ImageError(f"cannot read {full}: {err.strerror or err}") from None
    img = decode_image(data, color=not job.gray, max_pixels=job.max_pixels)
    img = resize_exact(img, job.resize_height, job.resize_width)
    c_h_w = _chw(img)
    if job.backend == "hdf5":
        return hwc_to_chw(img), c_h_w
    if job.encoded:
        enc = job.encode_type
        if not enc:
            if "." not in os.path.basename(path):
                raise ImageError(f"cannot guess the encoding of {path!r} (no extension); pass --encode-type")
            enc = path.rsplit(".", 1)[-1].lower()
        if job.resize_height == 0 and job.resize_width == 0 and _same_ext(path, enc):
            return encode_datum_bytes(data, label), c_h_w
        try:
            return encode_datum_bytes(encode_image(img, enc), label), c_h_w
        except (ImageError, cv2.error):
            raise ImageError(f"OpenCV cannot encode as {enc!r}; pass --encode-type jpg or png") from None
    return _RawDatum(img, label), c_h_w


_Result = tuple[int, object, tuple[int, int, int] | None, str | None]


class _Arena:
    """Shared memory that forked workers write finished records into: one slot per task in flight.

    Sending each 196 KB record back through the pool's pipe cost the parent
    about 0.35 ms of CPU (64 KB pipe reads, unpickling, waking threads) and
    the worker 0.1 ms more (building the Datum, pickling, writing), on a
    machine where decoding the image takes 1.7 ms; copying it out into a
    Python bytes object cost the parent another 0.1 ms. Here the worker
    writes the Datum in place (header, then the pixels split into C x H x W
    planes by OpenCV), only (offset, length) travel through the pipe, and the
    database writer puts straight from the shared memory. A slot is lent
    until the writer has written every record in it (see _Lease); when none
    is free, or a record does not fit, records travel the ordinary way, so
    nothing ever waits for a slot. The memory is an anonymous shared mapping
    inherited by the forked workers: nothing is left in /dev/shm whatever
    happens.
    """

    def __init__(self, slots: int, slot_bytes: int) -> None:
        self.slot_bytes = slot_bytes
        self.mem = mmap.mmap(-1, slots * slot_bytes)
        self.view = memoryview(self.mem)
        self._free = list(range(slots))
        self._lent = [0] * slots
        self._lock = threading.Lock()

    def acquire(self) -> int | None:
        """A free slot for the next task, or None when every slot is in use."""
        with self._lock:
            return self._free.pop() if self._free else None

    def lend(self, slot: int, records: int) -> None:
        """The task in `slot` returned `records` records that still live there (0: free it now)."""
        with self._lock:
            self._lent[slot] = records
            if records == 0:
                self._free.append(slot)

    def release(self, slot: int) -> None:
        """One record of `slot` is written; the slot is free once all of them are."""
        with self._lock:
            self._lent[slot] -= 1
            if self._lent[slot] == 0:
                self._free.append(slot)

    def put(self, slot: int, used: int, payload: object) -> tuple | None:
        """Write `payload` after `used` bytes of `slot`: a marker for take(), or None when it does not fit."""
        pos = slot * self.slot_bytes + used
        room = self.slot_bytes - used
        if isinstance(payload, _RawDatum):
            prefix, suffix, size = payload.parts()
            if size > room:
                return None
            c, h, w = _chw(payload.image)
            self.view[pos:pos + len(prefix)] = prefix
            start = pos + len(prefix)
            planes = np.frombuffer(self.mem, np.uint8, c * h * w, start).reshape(c, h, w)
            out = cv2.split(payload.image, [planes[i] for i in range(c)]) if c > 1 else None
            if out is None or out[0].ctypes.data != planes[0].ctypes.data:  # gray, or OpenCV chose new buffers
                np.copyto(planes, payload.image.reshape(h, w, c).transpose(2, 0, 1))
            self.view[start + c * h * w:pos + size] = suffix
            return ("b", pos, size)
        if isinstance(payload, np.ndarray):
            if payload.nbytes > room:
                return None
            np.copyto(np.frombuffer(self.mem, payload.dtype, payload.size, pos).reshape(payload.shape), payload)
            return ("a", pos, payload.shape, payload.dtype.str, payload.nbytes)
        data = bytes(payload)  # an encoded Datum
        if len(data) > room:
            return None
        self.view[pos:pos + len(data)] = data
        return ("b", pos, len(data))

    def take(self, marker: tuple) -> object:
        """The record a worker put(): a view of Datum bytes (lent), or a copy of an array."""
        if marker[0] == "b":
            _, pos, size = marker
            return self.view[pos:pos + size]
        _, pos, shape, dtype, nbytes = marker
        return np.frombuffer(self.view[pos:pos + nbytes], dtype).reshape(shape).copy()

    def close(self) -> None:
        """Unmap, unless a record still points into the memory (then it goes with the last view)."""
        with contextlib.suppress(BufferError):
            self.view.release()
            self.mem.close()


@dataclass(frozen=True, slots=True)
class _Lease:
    """Carried by a record that is a view into the arena: release() once it is written."""

    arena: _Arena
    slot: int

    def release(self) -> None:
        self.arena.release(self.slot)


_SLOT_BYTES = 4 << 20  # per batch in flight: about 15 raw 256x256 color records, 25 ms of decoding
_ARENA: _Arena | None = None  # in a worker: the arena it writes into (set by _init_with_arena)


def _init_with_arena(arena: _Arena, initializer: Callable, initargs: tuple) -> None:
    """Worker initializer: remember the arena (inherited through fork, never pickled), then the caller's."""
    global _ARENA
    _ARENA = arena
    initializer(*initargs)


def _convert_batch(items: Sequence[tuple[int, str, int]], slot: int | None = None) -> list[_Result]:
    """Worker entry: (index, path, label) -> (index, payload, shape, error).

    With a `slot` of the shared arena the payloads are written there and each
    result carries ("b"|"a", offset, ...) in a tuple tagged _IN_ARENA instead.
    """
    assert _JOB is not None
    out: list[_Result] = []
    used = 0
    for index, path, label in items:
        try:
            payload, shape = _convert_one(_JOB, path, label)
            if slot is not None and _ARENA is not None:
                marker = _ARENA.put(slot, used, payload)
                if marker is not None:
                    used += marker[-1]
                    out.append((index, (_IN_ARENA, marker), shape, None))
                    continue
            if isinstance(payload, _RawDatum):
                payload = payload.to_bytes()
            out.append((index, payload, shape, None))
        except ImageError as err:
            out.append((index, None, None, str(err)))
        except (cv2.error, ValueError, MemoryError) as err:
            out.append((index, None, None, f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:200]}"))
    return out


_IN_ARENA = "datakit-arena"


def _timed(fn: Callable[..., list], chunk: Sequence, slot: int | None) -> tuple[float, list]:
    started = time.perf_counter()
    out = fn(chunk, slot)
    return time.perf_counter() - started, out


def _from_arena(arena: _Arena, slot: int | None, results: list) -> tuple[list, int]:
    """(index, payload, shape, error, lease) with arena markers replaced by their records; the bytes used.

    Lends `slot` for as many records as are views into it.
    """
    out, used, lent = [], 0, 0
    lease = _Lease(arena, slot) if slot is not None else None
    for index, payload, shape, error in results:
        held = None
        if isinstance(payload, tuple) and len(payload) == 2 and payload[0] == _IN_ARENA:
            marker = payload[1]
            used += marker[-1]
            payload = arena.take(marker)
            if marker[0] == "b":
                held, lent = lease, lent + 1
        out.append((index, payload, shape, error, held))
    if slot is not None:
        arena.lend(slot, lent)
    return out, used


def ordered_parallel_map(fn: Callable[..., list], items: Iterable, *, workers: int,
                         initializer: Callable, initargs: tuple, batch: int = 8, max_batch: int = 128,
                         batch_seconds: float = 0.025, window_per_worker: int = 4,
                         slot_bytes: int = 0, spare_slots: int = 0) -> Iterator:
    """Apply `fn(chunk, slot)` to batches of `items` in worker processes; yield results in input order.

    `fn` returns (index, payload, shape, error) tuples; they are yielded with a
    fifth item, a _Lease to release() once the payload is written, or None.

    At most `workers * window_per_worker` batches are in flight, so memory
    stays bounded however long the input is and however slow the consumer.
    The batch size adapts so that a batch takes about `batch_seconds` in a
    worker: small images travel in large batches (the cost of sending a task
    dominates otherwise), large ones in small batches (bounded memory, even
    load). With `slot_bytes` > 0 and forked workers, each batch in flight
    owns a slot of that many bytes of shared memory (see _Arena), lent on
    with its records until they are written, with `spare_slots` slots beyond
    those in flight for records waiting to be written; batches are also sized
    to fill about three quarters of a slot. With `workers <= 1` everything
    runs in this process (`slot` is None).
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
        initializer(*initargs)
        for chunk in batches():
            for result in fn(chunk, None):
                yield (*result, None)
        return
    window = workers * window_per_worker
    arena = None
    if slot_bytes > 0 and sys.platform.startswith("linux"):  # forked workers inherit the mapping
        arena = _Arena(window + spare_slots, slot_bytes)
        initializer, initargs = _init_with_arena, (arena, initializer, initargs)
    try:
        with worker_pool(workers, initializer, initargs) as pool:
            pending: collections.deque[tuple[int, int | None, cf.Future]] = collections.deque()

            def submit(chunk: list) -> None:
                slot = arena.acquire() if arena is not None else None
                pending.append((len(chunk), slot, pool.submit(_timed, fn, chunk, slot)))

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
                        results, used = _from_arena(arena, slot, results)
                        if used:
                            size = max(1, min(size, int(0.75 * slot_bytes / (used / count))))
                    else:
                        results = [(*result, None) for result in results]
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


# ------------------------------------------------------------------ driver --

def _list_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_entries(list_path: Path, root: Path, allow_absolute: bool,
                  warn: Callable[[str], None]) -> list[ListEntry]:
    """The whole list, syntax- and path-checked; duplicates and label gaps are warnings, as Caffe accepts them."""
    entries = list(iter_list(list_path))
    seen: dict[str, int] = {}
    for e in entries:
        if not (allow_absolute and os.path.isabs(e.path)) and not _plainly_inside(e.path):
            try:
                safe_join(root, e.path)
            except ListError:
                raise ListError(f"{list_path}:{e.line}: path {e.path!r} escapes the image root "
                                "(absolute paths and '..' are not allowed; --allow-absolute accepts absolute ones)") from None
        if e.path in seen:
            warn(f"{list_path}:{e.line}: duplicate of line {seen[e.path]} ({e.path!r}); converting both")
        seen.setdefault(e.path, e.line)
    labels = sorted({e.label for e in entries})
    if labels and (labels[0] != 0 or labels[-1] != len(labels) - 1):
        warn(f"{list_path}: labels are not exactly 0..K-1 (found {len(labels)} values from {labels[0]} to "
             f"{labels[-1]}); a classifier needs num_output >= {labels[-1] + 1}")
    return entries


class _Progress:
    """The progress file inside the database being built: written atomically after every commit."""

    def __init__(self, folder: Path, state: dict) -> None:
        self.folder = folder
        self.state = state

    def save(self, **changes) -> None:
        self.state.update(changes)
        write_text_atomic(self.folder / PROGRESS_NAME, json.dumps(self.state, indent=1) + "\n")


def _open_writer(backend: str, folder: Path, chunk: int):
    if backend == "lmdb":
        from datakit.db.lmdb_backend import LmdbWriter
        return LmdbWriter(folder, drop_written=True)
    if backend == "leveldb":
        from datakit.db.leveldb_backend import LevelDBWriter
        return LevelDBWriter(folder)
    from datakit.db.hdf5_backend import HDF5Writer
    return HDF5Writer(folder, chunk=chunk)


def _is_ours_or_db(path: Path) -> bool:
    """Whether `path` may be replaced by --overwrite: a database or a folder this tool made."""
    if path.is_dir() and (path / PROGRESS_NAME).exists():
        return True
    try:
        detect_backend(path)
        return True
    except DatabaseError:
        return path.is_dir() and not any(path.iterdir())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(work: Path, final: Path) -> None:
    """Rename the finished database into place; an old one (--overwrite) goes only after that."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(work, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def _stderr_warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class _NothingWritten(DatabaseError):
    """Every listed image was skipped: an empty database would only hide the mistake."""


def convert(root: str | os.PathLike, list_path: str | os.PathLike, db_path: str | os.PathLike,
            options: ConvertOptions | None = None, *,
            warn: Callable[[str], None] = _stderr_warn) -> ConvertSummary:
    """Convert the images of a Caffe list under `root` into the database `db_path`.

    Returns the summary; raises DatakitError subclasses with one-line messages
    (list problems before any work starts; with --strict, the first bad image).
    """
    opts = options or ConvertOptions()
    opts.validate()
    started = time.perf_counter()
    root, list_path, final = Path(root), Path(list_path), Path(db_path)
    if not root.is_dir():
        raise ConfigError(f"{root}: image root folder not found")
    if not list_path.is_file():
        raise ListError(f"{list_path}: list file not found")
    if final.suffix.lower() == ".incomplete":
        raise ConfigError(f"{final}: name the database without '.incomplete' (that is where unfinished work lives)")
    work = incomplete_path(final)
    fingerprint = {"list": str(list_path.resolve()), "list_sha256": _list_sha256(list_path),
                   "root": str(root.resolve())}

    prior = read_progress(work) if work.is_dir() else None
    if opts.resume:
        if prior is None and final.exists():
            done = read_progress(final) if final.is_dir() else None
            if done is not None and done.get("status") == "complete":
                s = done.get("summary", {})
                return ConvertSummary(str(final), done["options"]["backend"], s.get("listed", 0), s.get("written", 0),
                                      [Skipped(**k) for k in done.get("skipped", [])], 0.0,
                                      s.get("shapes", []), done["options"].get("seed"), None, True)
            raise DatabaseError(f"{final}: exists and has no unfinished conversion to resume; "
                                "use --overwrite to convert again")
        if prior is None and work.exists():
            raise DatabaseError(f"{work}: unfinished conversion without a progress file; delete it and start over")
    else:
        if work.exists():
            if not opts.overwrite:
                raise DatabaseError(f"{work}: an interrupted conversion is there; pass --resume to finish it "
                                    "or --overwrite to start over")
            if prior is None:
                raise DatabaseError(f"{work}: not made by datakit convert; remove it yourself")
            shutil.rmtree(work)
            prior = None
        if final.exists() and not opts.overwrite:
            raise DatabaseError(f"{final}: already exists; pass --overwrite to replace it "
                                "(it is replaced only once the new database is complete)")
        if final.exists() and not _is_ours_or_db(final):
            raise DatabaseError(f"{final}: exists and is not a database; refusing to overwrite it")

    entries = _read_entries(list_path, root, opts.allow_absolute, warn)
    seed = opts.seed
    if prior is not None:
        _check_resumable(prior, opts, fingerprint, work)
        seed = prior["options"]["seed"]
    elif opts.shuffle and seed is None:
        seed = secrets.randbits(32)
    order = list(range(len(entries)))
    if opts.shuffle:
        random.Random(seed).shuffle(order)

    recorded = {k: getattr(opts, k) for k in _RESUME_KEYS}
    recorded["seed"] = seed
    if prior is None:
        work.mkdir(parents=True)
        progress = _Progress(work, {"status": "incomplete", "tool": "datakit convert", "options": recorded,
                                    **fingerprint, "listed": len(entries), "next_index": 0, "written": 0,
                                    "shards": 0, "shapes": [], "skipped": []})
        progress.save()
    else:
        progress = _Progress(work, prior)

    start = int(progress.state["next_index"])
    written = int(progress.state["written"])
    skipped = [Skipped(**k) for k in progress.state["skipped"]]
    shapes: list[tuple[int, int, int]] = [tuple(s) for s in progress.state["shapes"]]
    writer = _open_writer(opts.backend, work, opts.hdf5_chunk)
    try:
        if opts.backend == "hdf5":
            _drop_extra_shards(work, int(progress.state["shards"]), writer)
        elif start or written:
            writer.truncate_from(f"{start:08d}".encode())
        summary = _run(entries, order, start, written, skipped, shapes, opts, root, list_path, writer,
                       progress, warn)
        if summary.written == 0 and entries:
            raise _NothingWritten(f"{list_path}: none of its {len(entries)} images could be read, so no "
                                  f"database was written (list paths are relative to the root {root})")
        if opts.backend == "hdf5":
            writer.finish(final)
    except _NothingWritten:
        writer.close()
        shutil.rmtree(work, ignore_errors=True)
        raise
    except BaseException:
        writer.close()
        raise
    writer.close()
    summary.db = str(final)
    summary.seed = seed
    summary.resumed_at = start or None
    summary.seconds = time.perf_counter() - started
    progress.save(status="complete", next_index=len(entries),
                  summary={"listed": summary.listed, "written": summary.written, "shapes": summary.shapes,
                           "seconds": round(summary.seconds, 3)})
    _install(work, final)
    return summary


def _check_resumable(prior: dict, opts: ConvertOptions, fingerprint: dict, work: Path) -> None:
    changed = [k for k in ("list_sha256", "root") if prior.get(k) != fingerprint[k]]
    if changed:
        what = "the list file changed" if "list_sha256" in changed else "the image root changed"
        raise ConfigError(f"{work}: cannot resume: {what} since the interrupted run; "
                          "use --overwrite to start over")
    before = prior.get("options", {})
    diffs = [f"{k}={before.get(k)!r} (now {getattr(opts, k)!r})" for k in _RESUME_KEYS
             if k != "seed" and before.get(k) != getattr(opts, k)]
    if opts.seed is not None and before.get("seed") != opts.seed:
        diffs.append(f"seed={before.get('seed')!r} (now {opts.seed!r})")
    if diffs:
        raise ConfigError(f"{work}: cannot resume with different options: " + ", ".join(diffs))


def _drop_extra_shards(work: Path, keep: int, writer) -> None:
    """Shards completed after the last saved progress are redone, so remove them."""
    from datakit.db.hdf5_backend import shard_name
    index = keep
    while (work / shard_name(index)).exists():
        (work / shard_name(index)).unlink()
        index += 1
    writer.shards = keep


class _BackgroundWriter:
    """Writes batches in one thread and makes checkpoints in another, so neither stalls the workers.

    Commits stay in order. For LMDB/LevelDB, when a batch marked as a
    checkpoint is committed its progress state goes to the checkpoint thread,
    which flushes the database to disk and only then saves the progress file,
    so the progress file never claims records that are not on disk; the
    writer meanwhile goes on committing (a flush of 64 MB waits on the disk
    for about half a second). If checkpoints come faster than the disk
    flushes, only the latest waiting one is made. (HDF5 saves progress when a
    shard file is complete.) At most `depth` batches wait, so memory stays
    bounded. An error in either thread is raised in the caller at its next
    put() or close().
    """

    def __init__(self, writer, progress: _Progress, hdf5: bool, depth: int = 2) -> None:
        self.writer, self.progress, self.hdf5 = writer, progress, hdf5
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._checkpoint: dict | None = None
        self._done = False
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name="datakit-convert-writer", daemon=True)
        self.syncer = threading.Thread(target=self._sync_loop, name="datakit-convert-checkpoint", daemon=True)
        self.closed = False  # the threads start with the first put(): by then the worker pool has forked,
        #                      and a fork with other threads running can leave their locks held in the child

    def _loop(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                batch, state, checkpoint, leases = item
                try:
                    if self.error is not None:
                        continue  # drain after a failure; nothing more is written
                    if self.hdf5:
                        if self.writer.write(batch):
                            self.progress.save(shards=self.writer.shards, **state)
                    else:
                        self.writer.write(batch)
                        if checkpoint:
                            with self._cond:
                                self._checkpoint = state
                                self._cond.notify()
                except BaseException as err:  # noqa: BLE001 - re-raised in the caller
                    self.error = err
                finally:
                    batch.clear()  # drop the views into the arena before their slots are reused
                    for lease in leases:
                        lease.release()
        finally:
            with self._cond:
                self._done = True
                self._cond.notify()

    def _sync_loop(self) -> None:
        while True:
            with self._cond:
                while self._checkpoint is None and not self._done:
                    self._cond.wait()
                state, self._checkpoint = self._checkpoint, None
                if state is None:
                    return
            try:
                if self.error is None:
                    self.writer.sync()
                    self.progress.save(**state)
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller
                self.error = err

    def _raise(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def put(self, batch: list, state: dict, checkpoint: bool, leases: list) -> None:
        self._raise()
        if not self.thread.is_alive() and not self.closed:
            self.thread.start()
            self.syncer.start()
        self.queue.put((batch, state, checkpoint, leases))

    def close(self, abandon: bool = False) -> None:
        """Wait for every queued commit and checkpoint (and raise an error, unless abandoning after another)."""
        if not self.closed:
            self.closed = True
            if self.thread.ident is not None:  # started
                self.queue.put(None)
                self.thread.join()
                self.syncer.join()
        if not abandon:
            self._raise()


def _run(entries: list[ListEntry], order: list[int], start: int, written: int, skipped: list[Skipped],
         shapes: list[tuple[int, int, int]], opts: ConvertOptions, root: Path, list_path: Path, writer,
         progress: _Progress, warn: Callable[[str], None]) -> ConvertSummary:
    job = _Job(str(root), opts.backend, opts.resize_height, opts.resize_width, opts.gray, opts.encoded,
               opts.encode_type.lower(), opts.allow_absolute, opts.max_pixels)
    workers = opts.workers or default_workers()
    tasks = ((i, entries[order[i]].path, entries[order[i]].label) for i in range(start, len(entries)))
    show = sys.stderr.isatty() if opts.progress is None else opts.progress
    bar = None  # made when the first record arrives, after the pool has forked (tqdm runs a monitor thread)
    hdf5 = opts.backend == "hdf5"
    batch: list = []
    leases: list = []
    batch_bytes = 0
    warned = 0
    next_index = start
    since_checkpoint = [0, 0]  # records, bytes

    shard_rows = writer.rows if hdf5 else 0
    background = _BackgroundWriter(writer, progress, hdf5)

    def commit(last: bool = False) -> None:
        nonlocal batch, shard_rows, batch_bytes, leases
        since_checkpoint[0] += len(batch)
        since_checkpoint[1] += batch_bytes
        checkpoint = (last or since_checkpoint[0] >= opts.checkpoint_every * opts.commit_every
                      or since_checkpoint[1] >= opts.checkpoint_bytes)
        if checkpoint:
            since_checkpoint[:] = [0, 0]
        state = dict(next_index=next_index, written=written, shapes=[list(s) for s in shapes],
                     skipped=[asdict(s) for s in skipped]) if checkpoint or hdf5 else {}
        background.put(batch, state, checkpoint, leases)
        if hdf5:
            shard_rows = (shard_rows + len(batch)) % writer.chunk
        batch = []
        leases = []
        batch_bytes = 0

    try:
        for index, payload, shape, error, lease in ordered_parallel_map(
                _convert_batch, tasks, workers=workers, initializer=_init_worker, initargs=(job,),
                slot_bytes=_SLOT_BYTES, spare_slots=-(-4 * opts.commit_bytes // _SLOT_BYTES) + 2):
            if lease is not None:
                leases.append(lease)
            entry = entries[order[index]]
            where = f"{list_path}:{entry.line}: {entry.path}"
            if error is None and shape is not None and shapes and shape != shapes[0] and (opts.check_size or hdf5):
                c, h, w = shapes[0]
                raise ImageError(f"{where}: size {shape[0]}x{shape[1]}x{shape[2]} differs from the first record's "
                                 f"{c}x{h}x{w} (" + ("HDF5 needs one size" if hdf5 else "--check-size") +
                                 "; use --resize-height/--resize-width)")
            if error is not None:
                if opts.strict:
                    raise ImageError(f"{where}: {error} (--strict)")
                skipped.append(Skipped(index, entry.line, entry.path, error))
                warned += 1
                if warned <= 50:
                    warn(f"{where}: {error}; skipped")
                elif warned == 51:
                    warn("more images skipped; see the summary and --report")
            else:
                if shape not in shapes and len(shapes) < 100:
                    shapes.append(shape)
                if hdf5:
                    batch.append((payload, entry.label))
                    batch_bytes += payload.size * 4
                else:
                    batch.append((caffe_key(index, entry.path), payload))
                    batch_bytes += len(payload)
                written += 1
            next_index = index + 1
            if show and bar is None:
                from tqdm import tqdm
                bar = tqdm(total=len(entries), initial=start, unit="img", desc="convert", file=sys.stderr)
            if bar is not None:
                bar.update(1)
            limit = min(opts.commit_every, writer.chunk - shard_rows) if hdf5 else opts.commit_every
            if len(batch) >= limit or batch_bytes >= opts.commit_bytes:
                commit()
        commit(last=True)
        background.close()
        if hdf5:  # the last, partial shard is closed by finish(); record it
            progress.save(next_index=next_index, written=written, shapes=[list(s) for s in shapes],
                          skipped=[asdict(s) for s in skipped])
    finally:
        background.close(abandon=True)
        if bar is not None:
            bar.close()
    return ConvertSummary("", opts.backend, len(entries), written, skipped, 0.0, [list(s) for s in shapes])
