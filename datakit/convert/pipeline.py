"""The writing pipeline of a conversion: decoding workers -> records in order -> one Writer, with checkpoints.

Decoding and resizing run in worker processes (datakit.parallel.map_ordered)
that hand finished records to this process through shared memory; the
records are put in order into transactions of ``commit_every`` records or
``commit_bytes``, whichever comes first, by a background thread.

Durability comes at checkpoints, not at every transaction: convert_imageset
flushes each transaction to disk; we commit without flushing and, every
``checkpoint_every`` x ``commit_every`` records or ``checkpoint_bytes``,
whichever comes first, flush the database (``Writer.sync``) and only then
save the progress file. A writer whose data is durable only at points of
its own (an HDF5 shard completed) reports them from ``write``, and the
progress is saved there. Either way the progress file never claims a record
that is not on disk, so a killed process (or a crashed machine) resumes from
the last checkpoint; records written after it are removed by
``Writer.resume`` and redone. The figures behind these choices are in
benchmarks/RESULTS.md (convert).

Ctrl-C and SIGTERM keep every finished record: they are held back
(datakit.deferred_stop) until the record being handled is counted, then the
workers stop, the records so far are committed as a last checkpoint (flushed,
then the progress saved) and only then the interrupt goes on, so the count
reported is the count the progress bar showed (for HDF5: the records of its
completed shards, its only durable points). A second Ctrl-C / SIGTERM before
that stops at once: what the last checkpoint saved is kept (a checkpoint
already under way may still complete), the rest is redone by ``--resume``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

from datakit.arena import SharedArena
from datakit.convert import WorkerDied
from datakit.convert.encode import EncodeSpec, caffe_key, encode_batch
from datakit.convert.options import ConvertOptions, ConvertSummary, Skipped
from datakit.convert.workdir import WorkDir
from datakit.db.base import Writer
from datakit.deferred_stop import DeferredStop
from datakit.errors import ImageError
from datakit.imagelist import ListEntry
from datakit.parallel import default_workers, map_ordered
from datakit.report import progress_bar

__all__ = ["BackgroundWriter", "PipelineSettings", "write_records"]

@dataclass(frozen=True)
class PipelineSettings:
    """How records travel from the workers to the writer (tuning of the local path; tests shrink it).

    `slot_bytes`: shared memory per batch in flight (about 15 raw 256x256
    color records by default); `spare_slots`: slots beyond those in flight
    for records waiting to be written (None: room for four transactions);
    `batch` / `max_batch`: first and largest batch a worker gets;
    `arena_factory`: what makes the SharedArena (slots, slot_bytes).
    """

    slot_bytes: int = 4 << 20
    spare_slots: int | None = None
    batch: int = 8
    max_batch: int = 128
    arena_factory: Callable[[int, int], SharedArena] = SharedArena

    def spare_for(self, commit_bytes: int) -> int:
        if self.spare_slots is not None:
            return self.spare_slots
        return -(-4 * commit_bytes // self.slot_bytes) + 2


class BackgroundWriter:
    """Writes batches in one thread and makes checkpoints in another, so neither stalls the workers.

    Commits stay in order. When a batch marked as a checkpoint is written,
    its progress state goes to the checkpoint thread, which calls the
    writer's ``sync()`` and only then saves the progress file; the writer
    meanwhile goes on writing. If checkpoints come faster than the disk
    flushes, only the latest waiting one is made. A durable point reported by
    ``write()`` saves the progress at once. At most `depth` batches wait, so
    memory stays bounded. An error in either thread is raised in the caller
    at its next put() or close().
    """

    def __init__(self, writer: Writer, workdir: WorkDir, depth: int = 2) -> None:
        self.writer, self.workdir = writer, workdir
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._raised = False  # the error reached the caller once (close(abandon=True) must not raise it again)
        self._checkpoint: dict | None = None
        self._done = False
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name="datakit-convert-writer", daemon=True)
        self.syncer = threading.Thread(target=self._sync_loop, name="datakit-convert-checkpoint", daemon=True)
        self._ended = False  # the end of the queue was put
        self._wrote_all, self._synced_all = threading.Event(), threading.Event()  # each thread's last step
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
                    if self.writer.write(batch):
                        self.workdir.save(**state, **self.writer.progress_state())
                    elif checkpoint and self.writer.syncs:
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
            self._wrote_all.set()

    def _sync_loop(self) -> None:
        try:
            self._sync_checkpoints()
        finally:
            self._synced_all.set()

    def _sync_checkpoints(self) -> None:
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
                    self.workdir.save(**state, **self.writer.progress_state())
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller
                self.error = err

    def _raise(self) -> None:
        # The error stays set once raised: the threads keep draining without writing, so no batch
        # queued behind a failed one is written and no progress past the failure is saved (the
        # resume point stays at the last durable one, and the resumed database has no hole).
        if self.error is not None and not self._raised:
            self._raised = True
            raise self.error

    def put(self, batch: list, state: dict, checkpoint: bool, leases: list) -> None:
        self._raise()
        if not self.thread.is_alive() and not self.closed:
            self.thread.start()
            self.syncer.start()
        self.queue.put((batch, state, checkpoint, leases))

    def close(self, abandon: bool = False) -> None:
        """Wait for every queued commit and checkpoint (and raise an error, unless abandoning after another)."""
        self.closed = True
        if self.thread.ident is not None:  # started
            if not self._ended:
                self.queue.put(None)
                self._ended = True  # only once put: a stop at once may cut short the put, then close() is called again
            # Not Thread.join: one cut short by a KeyboardInterrupt (a stop at once) can mark a thread that is
            # still running as stopped (CPython's bpo-45274 handling), and the next join returns at once. An
            # Event can be waited for again; the commit in flight must end before the writer is closed.
            self._wrote_all.wait()
        if self.syncer.ident is not None:
            self._synced_all.wait()
        if not abandon:
            self._raise()


class _Tally:
    """What has been written so far: the resume point and the summary's counts."""

    def __init__(self, state: dict) -> None:
        self.next_index = int(state["next_index"])
        self.written = int(state["written"])
        self.skipped = [Skipped(**k) for k in state["skipped"]]
        self.shapes: list[tuple[int, int, int]] = [tuple(s) for s in state["shapes"]]  # type: ignore[misc]

    def state(self) -> dict:
        return dict(next_index=self.next_index, written=self.written, shapes=[list(s) for s in self.shapes],
                    skipped=[asdict(s) for s in self.skipped])


def write_records(entries: list[ListEntry], order: list[int], opts: ConvertOptions, spec: EncodeSpec,
                  list_path: Path, writer: Writer, workdir: WorkDir, warn: Callable[[str], None],
                  settings: PipelineSettings) -> ConvertSummary:
    """Encode entries ``order[next_index:]`` in the workers and write them in order; returns the counts.

    Record i of the output is ``entries[order[i]]``, keyed ``caffe_key(i, path)``
    (a skipped image leaves a gap in the indices, as in Caffe).
    """
    tally = _Tally(workdir.state)
    start = tally.next_index
    workers = opts.workers or default_workers()
    tasks = ((i, entries[order[i]].path, entries[order[i]].label) for i in range(start, len(entries)))
    one_shape = opts.check_size or writer.one_shape
    array_records = writer.record_kind == "array"
    bar = None  # made when the first record arrives, after the pool has forked (tqdm runs a monitor thread)
    batch: list = []
    leases: list = []
    batch_bytes = 0
    handed = 0  # records given to the writer since it opened (for its batch_limit)
    since_records = since_bytes = 0  # since the last checkpoint
    background = BackgroundWriter(writer, workdir)

    def commit(last: bool = False) -> None:
        nonlocal batch, leases, batch_bytes, handed, since_records, since_bytes
        since_records += len(batch)
        since_bytes += batch_bytes
        checkpoint = (last or since_records >= opts.checkpoint_every * opts.commit_every
                      or since_bytes >= opts.checkpoint_bytes)
        if checkpoint:
            since_records = since_bytes = 0
        # a writer without sync() may reach a durable point at any batch: it needs the state every time
        state = tally.state() if checkpoint or not writer.syncs else {}
        background.put(batch, state, checkpoint, leases)
        handed += len(batch)
        batch, leases, batch_bytes = [], [], 0

    records = map_ordered(encode_batch, tasks, args=(spec,), workers=workers, batch=settings.batch,
                          max_batch=settings.max_batch, slot_bytes=settings.slot_bytes,
                          spare_slots=settings.spare_for(opts.commit_bytes), arena_factory=settings.arena_factory)

    def keep_what_is_done() -> None:
        records.close()  # the workers stop (what they decode after a stop is not wanted)
        commit(last=True)  # every record counted so far, as a checkpoint: flushed, then the progress saved
        background.close()

    # Ctrl-C / SIGTERM are held back to the end of a record (see the module docstring); the block also
    # covers the cleanup, so that signals after a stop at once do not cut short its wait for the writer
    with DeferredStop() as stop, contextlib.closing(records):
        try:
            for (index, payload, shape, error), lease in records:
                if lease is not None:
                    leases.append(lease)
                entry = entries[order[index]]
                where = f"{list_path}:{entry.line}: {entry.path}"
                shapes = tally.shapes
                if error is None and shape is not None and shapes and shape != shapes[0] and one_shape:
                    c, h, w = shapes[0]
                    why = f"{(writer.backend or 'this backend').upper()} needs one size" if writer.one_shape else "--check-size"
                    raise ImageError(f"{where}: size {shape[0]}x{shape[1]}x{shape[2]} differs from the first record's "
                                     f"{c}x{h}x{w} ({why}; use --resize-height/--resize-width)")
                if error is not None:
                    if opts.strict:
                        raise ImageError(f"{where}: {error} (--strict)")
                    tally.skipped.append(Skipped(index, entry.line, entry.path, error))
                    warn(f"{where}: {error}; skipped")  # the caller caps these (datakit.warncap)
                else:
                    if shape not in shapes and len(shapes) < 100:
                        shapes.append(shape)
                    if array_records:
                        batch.append((payload, entry.label))
                        batch_bytes += payload.size * 4
                    else:
                        batch.append((caffe_key(index, entry.path), payload))
                        batch_bytes += len(payload)
                    tally.written += 1
                tally.next_index = index + 1
                if bar is None:
                    bar = progress_bar(len(entries), opts.progress, initial=start, unit="img", desc="convert")
                bar.update(1)
                if len(batch) >= writer.batch_limit(handed, opts.commit_every) or batch_bytes >= opts.commit_bytes:
                    commit()
                if stop.requested:
                    break  # every record so far is counted and batched: commit them as a checkpoint, below
            keep_what_is_done()
        except ImageError:  # --strict / --check-size / one size: the records before the bad one are kept too
            keep_what_is_done()
            raise
        except BrokenProcessPool:  # a worker died (killed, out of memory): what was finished is kept as well
            keep_what_is_done()
            if not stop.requested:  # else a group's SIGTERM ended the workers too: the stop is delivered below
                raise WorkerDied(f"{list_path}: a decoding worker process died (killed from outside or by the "
                                 "kernel's out-of-memory killer, or a crash in a decoder)") from None
        finally:
            background.close(abandon=True)
            if bar is not None:
                bar.close()
    return ConvertSummary("", opts.backend, len(entries), tally.written, tally.skipped, 0.0,
                          [list(s) for s in tally.shapes])
