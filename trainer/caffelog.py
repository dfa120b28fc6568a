"""Training logs in Caffe's glog line format, plus a metrics CSV.

Caffe users have tools (parse_log.py, plot_training_log.py, their own greps)
that read lines like ``Iteration 100, loss = 0.31``; writing exactly those
messages, behind a glog-style prefix, keeps those tools working on our runs.
The CSV beside it is the machine-readable twin: one row per event (one number at one
iteration of one run: ``iteration,phase,name,value,seconds,run``; no two rows share
iteration, phase, name and run).

Runs: a log file is appended to, so a resumed run continues it. Each ``trainer fit``
begins with a header line ``trainer fit run N: HOW`` (HOW says from scratch,
fine-tuning from W, resuming from S, or restarting over earlier snapshots); N counts the
runs already in the log (or, without one, in the metrics CSV) and fills the CSV's run
column, so `trainer plot` and a CSV reader keep runs apart.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import re
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO
from collections.abc import Callable, Sequence


def fmt(value: float) -> str:
    """Numbers as C++ iostreams print floats by default (``%g`` with 6 significant digits)."""
    return f"{float(value):.6g}"


def caller_source() -> str:
    """``file.py:LINE`` of the first caller outside this module: the source glog puts in each line."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    if frame is None:
        return "caffelog.py:0"
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def glog_prefix(severity: str = "I", source: str | None = None, now: float | None = None) -> str:
    """``I1126 04:35:12.123456 12345 solver.py:214] `` (thread id right-aligned to 5, as glog).

    `source` defaults to the file and line that asked for the message, as glog's does.
    """
    source = source or caller_source()
    t = _dt.datetime.fromtimestamp(time.time() if now is None else now)
    tid = threading.get_native_id() % 100000 if hasattr(threading, "get_native_id") else os.getpid()
    return f"{severity}{t:%m%d %H:%M:%S}.{t.microsecond:06d} {tid:5d} {source}] "


class CaffeLog:
    """Writes Caffe-format lines to stderr and/or a log file, and numbers to a metrics CSV.

    ``stream`` is where a user watches progress (stderr by default, as glog);
    ``path`` is the durable log (appended to, so a resumed run continues it);
    ``metrics_path`` gets ``iteration,phase,name,value,seconds,run`` rows; ``run`` is this
    run's number (see the module docstring), found from the files unless given.
    """

    def __init__(self, path: str | Path | None = None, *, metrics_path: str | Path | None = None,
                 stream: IO[str] | None = sys.stderr, prefix: bool = True, run: int | None = None) -> None:
        self.stream = stream
        self.prefix = prefix
        self.started = time.perf_counter()
        self._file: IO[str] | None = None
        self._csv_file: IO[str] | None = None
        self._csv = None
        self.run = run if run is not None else 1 + max(runs_in_log(path), runs_in_metrics(metrics_path))
        self.renamed_metrics: Path | None = None
        #: more places each metric goes, called as sink(iteration, phase, name, value) (TensorBoard)
        self.sinks: list[Callable[[int, str, str, float], None]] = []
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")
        if metrics_path is not None:
            metrics_path = Path(metrics_path)
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            if _csv_header(metrics_path) not in (None, METRICS_HEADER):
                # A metrics file of the older layout (no run column): kept whole under another name.
                self.renamed_metrics = metrics_path.with_name(metrics_path.name + ".old")
                os.replace(metrics_path, self.renamed_metrics)
            fresh = _csv_header(metrics_path) is None
            self._csv_file = open(metrics_path, "a", encoding="utf-8", newline="")
            self._csv = csv.writer(self._csv_file)
            if fresh:
                self._csv.writerow(METRICS_HEADER)

    # -- raw lines --------------------------------------------------------------------------
    def line(self, message: str, *, severity: str = "I", source: str | None = None, to_stream: bool = True) -> None:
        """One line to the stream and the log file; `to_stream` False: the file only (a progress
        line while a bar is drawn on the stream)."""
        text = (glog_prefix(severity, source) if self.prefix else "") + message
        if self.stream is not None and to_stream:
            try:
                print(text, file=self.stream, flush=True)
            except OSError:
                # The terminal hung up (EIO after SIGHUP) or the pipe's reader left: nobody watches
                # any more, and the log file still gets every line; training and its snapshot go on.
                self.stream = None
        if self._file is not None:
            try:
                self._file.write(text + "\n")
                self._file.flush()
            except OSError as err:
                self._give_up(self._file, err, "log")
                self._file = None

    def info(self, message: str, source: str | None = None, to_stream: bool = True) -> None:
        self.line(message, source=source, to_stream=to_stream)

    def warning(self, message: str, source: str | None = None) -> None:
        self.line(message, severity="W", source=source)

    def run_header(self, how: str) -> None:
        """The line that starts a run in the log: ``trainer fit run N: HOW``."""
        self.info(f"trainer fit run {self.run}: {how}")

    def metric(self, iteration: int, phase: str, name: str, value: float, *, sink_phase: str | None = None,
               sink_name: str | None = None) -> None:
        """A CSV row (with this run's number), and a call to each sink, with `sink_phase` / `sink_name`
        when given: train net outputs are 'train_output' there, so they never share a tag with the
        smoothed train loss."""
        if self._csv is not None and self._csv_file is not None:  # opened together, closed together
            try:
                self._csv.writerow([iteration, phase, name, repr(float(value)),
                                    f"{time.perf_counter() - self.started:.3f}", self.run])
                self._csv_file.flush()
            except OSError as err:
                self._give_up(self._csv_file, err, "metrics CSV")
                self._csv_file = self._csv = None
        for sink in self.sinks:
            sink(iteration, sink_phase or phase, sink_name or name, value)

    def _give_up(self, f: IO[str], err: OSError, what: str) -> None:
        """A log file that cannot be written (full disk) must not stop training: say so once and go on.

        Snapshots check their own space and stop the run with their own message.
        """
        import contextlib
        name = getattr(f, "name", what)
        with contextlib.suppress(OSError):
            f.close()
        if self.stream is not None:
            print(f"{glog_prefix('W') if self.prefix else ''}cannot write the {what} {name}: "
                  f"{err.strerror or err}; it stops here, training goes on", file=self.stream, flush=True)

    # -- Caffe's solver messages --------------------------------------------------------------
    def train_loss(self, it: int, loss: float) -> None:
        self.info(f"Iteration {it}, loss = {fmt(loss)}")
        self.metric(it, "train", "loss", loss)

    def train_outputs(self, it: int, outputs: Sequence[tuple[str, float, float]]) -> None:
        """``(name, value, loss_weight)`` for each net output, numbered as Caffe does."""
        counts: dict[str, int] = {}
        for name, _, _ in outputs:
            counts[name] = counts.get(name, 0) + 1
        seen: dict[str, int] = {}
        for k, (name, value, weight) in enumerate(outputs):
            self.info(_output_line("Train", k, name, value, weight))
            # "output NAME": the net's own output, apart from the averaged "loss" of the line above;
            # a vector output's elements get [j], as in test_outputs
            j = seen[name] = seen.get(name, -1) + 1
            key = f"{name}[{j}]" if counts[name] > 1 else name
            self.metric(it, "train", f"output {key}", value, sink_phase="train_output", sink_name=key)

    def learning_rate(self, it: int, rate: float) -> None:
        self.info(f"Iteration {it}, lr = {fmt(rate)}")
        self.metric(it, "train", "lr", rate)

    def testing(self, it: int, net_id: int) -> None:
        self.info(f"Iteration {it}, Testing net (#{net_id})")

    def test_outputs(self, it: int, outputs: Sequence[tuple[str, float, float]], net_id: int = 0) -> None:
        counts: dict[str, int] = {}
        for name, _, _ in outputs:
            counts[name] = counts.get(name, 0) + 1
        seen: dict[str, int] = {}
        for k, (name, value, weight) in enumerate(outputs):
            self.info(_output_line("Test", k, name, value, weight))
            # a vector output prints one line per element under one name (as Caffe); its rows get [j]
            j = seen[name] = seen.get(name, -1) + 1
            key = f"{name}[{j}]" if counts[name] > 1 else name
            self.metric(it, "test" if net_id == 0 else f"test{net_id}", key, value)

    def close(self) -> None:
        for f in (self._file, self._csv_file):
            if f is not None:
                f.close()
        self._file = self._csv_file = None


METRICS_HEADER = ["iteration", "phase", "name", "value", "seconds", "run"]
RE_RUN_HEADER = re.compile(r"(?:^|\] )trainer fit run (\d+): ")


def _csv_header(path: Path) -> list[str] | None:
    """The first row of a CSV, or None for a missing or empty file."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            first = f.readline()
    except FileNotFoundError:
        return None
    return next(csv.reader([first])) if first.strip() else None


def runs_in_log(path: str | Path | None) -> int:
    """The highest run number in a log's ``trainer fit run N:`` headers (0 for none or no log)."""
    if path is None or not Path(path).is_file():
        return 0
    best = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "trainer fit run " in line:
                m = RE_RUN_HEADER.search(line)
                if m:
                    best = max(best, int(m.group(1)))
    return best


def runs_in_metrics(path: str | Path | None) -> int:
    """The highest value of a metrics CSV's run column (0 for none)."""
    if path is None or _csv_header(Path(path)) != METRICS_HEADER:
        return 0
    best = 0
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.reader(f):
            if len(row) == len(METRICS_HEADER) and row[-1].isdigit():
                best = max(best, int(row[-1]))
    return best


def _output_line(kind: str, k: int, name: str, value: float, weight: float) -> str:
    line = f"    {kind} net output #{k}: {name} = {fmt(value)}"
    if weight:
        line += f" (* {fmt(weight)} = {fmt(weight * value)} loss)"
    return line
