"""Training logs in Caffe's glog line format, plus a metrics CSV.

Caffe users have tools (parse_log.py, plot_training_log.py, their own greps)
that read lines like ``Iteration 100, loss = 0.31``; writing exactly those
messages, behind a glog-style prefix, keeps those tools working on our runs.
The CSV beside it is the machine-readable twin: one row per number.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO
from collections.abc import Callable, Sequence


def fmt(value: float) -> str:
    """Numbers as C++ iostreams print floats by default (``%g`` with 6 significant digits)."""
    return f"{float(value):.6g}"


def caller_source() -> str:
    """``file.py:LINE`` of the first caller outside this module: the source glog puts in each line."""
    frame = sys._getframe(1)
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
    ``metrics_path`` gets ``iteration,phase,name,value,seconds`` rows.
    """

    def __init__(self, path: str | Path | None = None, *, metrics_path: str | Path | None = None,
                 stream: IO[str] | None = sys.stderr, prefix: bool = True) -> None:
        self.stream = stream
        self.prefix = prefix
        self.started = time.perf_counter()
        self._file: IO[str] | None = None
        self._csv_file: IO[str] | None = None
        self._csv = None
        #: more places each metric goes, called as sink(iteration, phase, name, value) (TensorBoard)
        self.sinks: list[Callable[[int, str, str, float], None]] = []
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")
        if metrics_path is not None:
            metrics_path = Path(metrics_path)
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not metrics_path.exists() or metrics_path.stat().st_size == 0
            self._csv_file = open(metrics_path, "a", encoding="utf-8", newline="")
            self._csv = csv.writer(self._csv_file)
            if fresh:
                self._csv.writerow(["iteration", "phase", "name", "value", "seconds"])

    # -- raw lines --------------------------------------------------------------------------
    def line(self, message: str, *, severity: str = "I", source: str | None = None) -> None:
        text = (glog_prefix(severity, source) if self.prefix else "") + message
        if self.stream is not None:
            print(text, file=self.stream, flush=True)
        if self._file is not None:
            self._file.write(text + "\n")
            self._file.flush()

    def info(self, message: str, source: str | None = None) -> None:
        self.line(message, source=source)

    def warning(self, message: str, source: str | None = None) -> None:
        self.line(message, severity="W", source=source)

    def metric(self, iteration: int, phase: str, name: str, value: float, *, sink_phase: str | None = None) -> None:
        """A CSV row, and a call to each sink (with `sink_phase` when given: train net outputs
        are 'train_output' there, so they never share a tag with the smoothed train loss)."""
        if self._csv is not None:
            self._csv.writerow([iteration, phase, name, repr(float(value)),
                                f"{time.perf_counter() - self.started:.3f}"])
            self._csv_file.flush()
        for sink in self.sinks:
            sink(iteration, sink_phase or phase, name, value)

    # -- Caffe's solver messages --------------------------------------------------------------
    def train_loss(self, it: int, loss: float) -> None:
        self.info(f"Iteration {it}, loss = {fmt(loss)}")
        self.metric(it, "train", "loss", loss)

    def train_outputs(self, it: int, outputs: Sequence[tuple[str, float, float]]) -> None:
        """``(name, value, loss_weight)`` for each net output, numbered as Caffe does."""
        for k, (name, value, weight) in enumerate(outputs):
            self.info(_output_line("Train", k, name, value, weight))
            self.metric(it, "train", name, value, sink_phase="train_output")

    def learning_rate(self, it: int, rate: float) -> None:
        self.info(f"Iteration {it}, lr = {fmt(rate)}")
        self.metric(it, "train", "lr", rate)

    def testing(self, it: int, net_id: int) -> None:
        self.info(f"Iteration {it}, Testing net (#{net_id})")

    def test_outputs(self, it: int, outputs: Sequence[tuple[str, float, float]], net_id: int = 0) -> None:
        for k, (name, value, weight) in enumerate(outputs):
            self.info(_output_line("Test", k, name, value, weight))
            self.metric(it, "test" if net_id == 0 else f"test{net_id}", name, value)

    def close(self) -> None:
        for f in (self._file, self._csv_file):
            if f is not None:
                f.close()
        self._file = self._csv_file = None


def _output_line(kind: str, k: int, name: str, value: float, weight: float) -> str:
    line = f"    {kind} net output #{k}: {name} = {fmt(value)}"
    if weight:
        line += f" (* {fmt(weight)} = {fmt(weight * value)} loss)"
    return line


def memory_log() -> tuple[CaffeLog, io.StringIO]:
    """A log that writes to a string (tests, API users who want the text)."""
    buf = io.StringIO()
    return CaffeLog(stream=buf), buf
