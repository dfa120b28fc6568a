"""TensorBoard scalars from training: live from ``trainer fit --tensorboard DIR``, or from old logs.

Written with TensorBoard's own event-file writer (``tensorboard`` package; no TensorFlow),
so any TensorBoard reads the files. One tag scheme for both sources, so a run trained
today and a 2014 Caffe log line up in one board:

* ``train/loss`` (the smoothed loss Caffe prints), ``train/lr``, and
  ``train_output/NAME`` for each train net output;
* ``test/NAME`` for test net #0's outputs, ``test1/NAME``... for the others
  (2014 logs' ``Test score #0/#1`` are ``test/accuracy`` and ``test/loss``, as
  :mod:`trainer.curves` names them).

``trainer fit --tensorboard DIR`` writes DIR itself (one run; a resumed run adds a new
event file beside the old ones). A run resumed from the snapshot of iteration N logs N and
what follows again, so the scalars at N or later that DIR already holds (a run killed after
that snapshot got further) are removed first (`drop_steps_from`): TensorBoard would
otherwise draw them twice. ``trainer plot LOG...
--tensorboard DIR`` writes one run folder per log (and per restart inside a log):
``DIR/<log name>`` then ``DIR/<log name>-run2``...

A log is converted whole each time, so ``trainer plot`` replaces the event file it wrote
before in a run folder (its files end in PLOT_SUFFIX) instead of adding a second copy of
every point, which TensorBoard would draw twice (and smooth across the jump back). A run
folder holding other event files (``trainer fit --tensorboard`` writing the same run live,
the README's own example) is left as it is, with a warning: adding the log's copy would
double that run too.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from datakit.errors import ConfigError

__all__ = ["ScalarWriter", "tag_for", "log_to_tensorboard", "runs_to_tensorboard", "PLOT_SUFFIX",
           "drop_steps_from"]

#: The end of the event files ``trainer plot`` writes (TensorBoard reads any ``*tfevents*`` file).
PLOT_SUFFIX = ".trainer-plot"


def _writer_class():
    try:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'datakit[tensorboard]'") from None
    return EventFileWriter


class ScalarWriter:
    """Scalars into one TensorBoard run folder (created if missing); flushes at close().

    ``max_queue`` is the writer thread's queue: a live run adds a few scalars per display, a
    log conversion adds tens of thousands in a row and wants a long one.
    """

    def __init__(self, logdir: str | os.PathLike, *, flush_secs: float = 10, max_queue: int = 10,
                 filename_suffix: str = "") -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = _writer_class()(str(self.logdir), max_queue_size=max_queue, flush_secs=flush_secs,
                                       filename_suffix=filename_suffix)
        self.count = 0

    def scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))])
        self._writer.add_event(event_pb2.Event(summary=summary, step=int(step),
                                               wall_time=time.time() if wall_time is None else wall_time))
        self.count += 1

    def metric(self, iteration: int, phase: str, name: str, value: float) -> None:
        """A :class:`trainer.caffelog.CaffeLog` metric (``phase``: train, train_output, test, test1, ...)."""
        self.scalar(f"{phase}/{name}", value, iteration)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def drop_steps_from(logdir: str | os.PathLike, step: int) -> int:
    """Remove the scalars of iteration `step` and later from the event files in `logdir`, each
    rewritten beside itself and renamed over it; returns how many were removed (0: files untouched)."""
    folder = Path(logdir)
    if not folder.is_dir():
        return 0
    _writer_class()  # the clear error when tensorboard is missing
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    def later(record: bytes) -> bool:
        event = event_pb2.Event.FromString(record)
        return event.HasField("summary") and event.step >= step

    dropped = 0
    for path in sorted(folder.glob("*tfevents*")):
        records = list(RawEventFileLoader(str(path)).Load())   # the bytes as written, not re-encoded
        keep = [r for r in records if not later(r)]
        if len(keep) == len(records):
            continue
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            for r in keep:
                writer.write(r)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dropped += len(records) - len(keep)
    return dropped


_NET = re.compile(r"^(.*) \(net #(\d+)\)$")


def tag_for(kind: str, name: str) -> str:
    """The tag of a parsed log series: ``kind`` 'train' or 'test', ``name`` as trainer.curves keys it."""
    if kind == "train":
        return f"train_output/{name[len('output '):]}" if name.startswith("output ") else f"train/{name}"
    m = _NET.match(name)
    return f"test{m.group(2)}/{m.group(1)}" if m else f"test/{name}"


def _run_folder(name: str) -> str:
    for suffix in (".gz", ".log", ".txt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name) or "log"


# A whole log's scalars are queued at once: with the writer's default queue of 10 every add waits
# on its thread, which made the handoff, not the writing, most of a conversion's time.
_BULK_QUEUE = 1 << 16


def _stderr_warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def runs_to_tensorboard(runs: list, logdir: str | os.PathLike, *,
                        warn: Callable[[str], None] = _stderr_warn) -> list[tuple[Path, int]]:
    """Write parsed runs (:func:`trainer.curves.parse_log`) to ``logdir``; (run folder, scalars) each.

    A run folder's earlier ``trainer plot`` event file is replaced (removed once the new one is
    closed); a folder with other event files is skipped with a `warn` line (module docstring).
    """
    written = []
    used: set[str] = set()
    for run in runs:
        folder = _run_folder(run.source) + (f"-run{run.index + 1}" if run.index else "")
        while folder in used:
            folder += "_"
        used.add(folder)
        target = Path(logdir) / folder
        events = sorted(target.glob("*tfevents*")) if target.is_dir() else []
        others = [f for f in events if not f.name.endswith(PLOT_SUFFIX)]
        if others:
            warn(f"{target}: holds TensorBoard events that trainer plot did not write ({others[0].name}, from "
                 f"trainer fit --tensorboard?); {run.source} was not added there, as TensorBoard would draw "
                 "that run twice: give --tensorboard another folder to convert the log")
            continue
        with ScalarWriter(target, max_queue=_BULK_QUEUE, filename_suffix=PLOT_SUFFIX) as w:
            for kind, series in (("train", run.train), ("test", run.test)):
                for name, points in series.items():
                    tag = tag_for(kind, name)
                    for it, value in points:
                        w.scalar(tag, value, it)
        for old in events:   # listed before the new file was made: superseded by the whole log just written
            old.unlink(missing_ok=True)
        written.append((w.logdir, w.count))
    return written


def log_to_tensorboard(logs: list[str | os.PathLike], logdir: str | os.PathLike, *,
                       warn: Callable[[str], None] = _stderr_warn) -> list[tuple[Path, int]]:
    """Convert Caffe-format logs (ours or Caffe's own, plain or .gz) into TensorBoard runs."""
    from trainer.curves import parse_log
    runs = [run for log in logs for run in parse_log(log)]
    return runs_to_tensorboard(runs, logdir, warn=warn)
