"""A run's row in the table and its card: state, latest numbers and curves, from its log alone.

The log is parsed with :mod:`trainer.curves` (ours and real Caffe logs, restarts as separate
segments). The state is read from the log's last words:

* ``finished``: ``Optimization Done.`` (Caffe's and ours);
* ``stopped``: ``Optimization stopped early`` (a signal; a snapshot was written), or a log that
  has not grown for `stale_after` seconds without either line (the process was killed), or a
  gzip-compressed log without either line (nothing appends to a ``.gz`` while it trains: a
  compressed log is a closed one, however recent its file's time; a freshly copied archive of
  2014 logs must not show as running);
* ``failed``: an error line (glog severity ``E``/``F``: Caffe's ``Check failed``, or the error
  ``trainer fit`` logs when it stops on one) after the last restart;
* ``running``: none of these, and the log was written in the last `stale_after` seconds.

A log that cannot be parsed gives a row with ``state: "error"`` and the one-line reason, so
the table and the card show it instead of the server failing.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from datakit.errors import FormatError

from trainer.board.svg import Series, line_chart
from trainer.curves import Run, open_text, parse_lines

__all__ = ["RunInfo", "read_run", "run_row", "curves_svg", "STALE_AFTER"]

STALE_AFTER = 600.0
_ERROR_LINE = re.compile(r"^[EF]\d{4} \d\d:\d\d:\d\d")
_GLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")
_STOPPED = "Optimization stopped early"
_DONE = "Optimization Done."
# ours: "Creating training net from X" / "Creating test net (#0) specified by X";
# Caffe's: "... from net file: X" / "... specified by net file: X" / "... from train_net file: X".
_NET_FROM = re.compile(r"Creating (?:training|test) net.*?(?:file: |from |specified by )(\S+)\s*$")


@dataclass
class RunInfo:
    """What one log says, parsed once and kept until the file changes."""

    path: str
    runs: list[Run]
    ending: str            # "done", "stopped", "failed" or "" (still going, or killed)
    error_line: str
    nets: list[str]        # net files named by "Creating training/test net from ..."
    mtime: float
    closed: bool = False   # gzip: written once, never appended to, so never "running"


def _scan_endings(lines: list[str]) -> tuple[str, str, list[str]]:
    ending, error, nets = "", "", []
    for line in lines:
        if "] Solving " in line:  # the solver (re)starts: what an earlier segment ended with is history
            ending, error = "", ""
        if _DONE in line:
            ending, error = "done", ""
        elif _STOPPED in line:
            ending, error = "stopped", ""
        elif _ERROR_LINE.match(line):
            ending, error = "failed", line.split("] ", 1)[-1].strip()
        m = _NET_FROM.search(line)
        if m and m.group(1) not in nets:
            nets.append(m.group(1))
    return ending, error, nets


def read_run(path: Path, name: str) -> RunInfo:
    """Parse a log (plain or gzip); raises FormatError for one that is unreadable or not a Caffe log.

    A log with glog lines but no iteration yet is a run that has just started, not an error.
    """
    mtime = path.stat().st_mtime
    try:
        lines = list(open_text(path))
    except (EOFError, zlib.error, OSError) as err:  # truncated or corrupt gzip
        raise FormatError(f"{name}: cannot read log: {err}") from None
    runs = parse_lines(lines, source=name)
    if not runs and lines and not any(_GLOG_LINE.match(line) for line in lines[:1000]):
        raise FormatError(f"{name}: not a Caffe log (no glog lines, no 'Iteration N, loss = X' lines)")
    ending, error, nets = _scan_endings(lines)
    closed = path.name.endswith(".gz")
    return RunInfo(name, runs, ending, error, nets, mtime, closed)


def _last(points: list[tuple[int, float]]) -> float | None:
    return points[-1][1] if points else None


def _clean(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def accuracy_names(runs: list[Run]) -> list[str]:
    return sorted({n for r in runs for n in r.test if "acc" in n.lower()})


def run_row(info: RunInfo, *, now: float | None = None, stale_after: float = STALE_AFTER) -> dict:
    """The run table's row: name, iteration, latest loss, best test accuracy, lr, state."""
    now = time.time() if now is None else now
    last = info.runs[-1] if info.runs else None
    acc = accuracy_names(info.runs)
    best = [v for r in info.runs for n in acc for _, v in r.test[n] if math.isfinite(v)]
    if info.ending == "done":
        state, note = "finished", ""
    elif info.ending == "stopped":
        state, note = "stopped", "stopped early (a snapshot was written)"
    elif info.ending == "failed":
        state, note = "failed", info.error_line
    elif info.closed:
        state, note = "stopped", "compressed log without an end line (the run was stopped or killed)"
    elif now - info.mtime > stale_after:
        state, note = "stopped", f"no end line and not written for {int(now - info.mtime)} s (killed?)"
    else:
        state, note = "running", ""
    return {
        "path": info.path,
        "name": info.path,
        "iteration": last.last_iteration if last else None,
        "loss": _clean(_last(last.train.get("loss", []))) if last else None,
        "best_accuracy": max(best) if best else None,
        "accuracy_name": acc[0] if acc else None,
        "lr": _clean(_last(last.train.get("lr", []))) if last else None,
        "state": state,
        "note": note,
        "segments": len(info.runs),
        "error": None,
    }


def error_row(name: str, message: str) -> dict:
    return {"path": name, "name": name, "iteration": None, "loss": None, "best_accuracy": None,
            "accuracy_name": None, "lr": None, "state": "error", "note": message, "segments": 0, "error": message}


def curves_svg(info: RunInfo) -> dict[str, str]:
    """Three SVG charts against iteration: loss (train, test), test accuracy, learning rate."""
    loss, accuracy, lr = [], [], []
    acc = set(accuracy_names(info.runs))
    for k, run in enumerate(info.runs):
        tag = "" if len(info.runs) == 1 else f" (run {k + 1})"
        if run.train.get("loss"):
            loss.append(Series(f"train loss{tag}", run.train["loss"]))
        for name in sorted(set(run.test) - acc):
            loss.append(Series(f"test {name}{tag}", run.test[name], dashed=True, markers=True))
        for name in sorted(acc & set(run.test)):
            accuracy.append(Series(f"{name}{tag}", run.test[name], markers=True))
        if run.train.get("lr"):
            lr.append(Series(f"lr{tag}", run.train["lr"]))
    its = [it for s in loss + accuracy + lr for it, _ in s.points]
    x_range = (min(its) - 0.02 * (max(its) - min(its) or 1), max(its) + 0.02 * (max(its) - min(its) or 1)) if its else None
    acc_values = [v for s in accuracy for _, v in s.points if math.isfinite(v)]
    y_acc = (0.0, 1.0) if acc_values and all(0 <= v <= 1 for v in acc_values) else None
    positive_lr = all(v > 0 for s in lr for _, v in s.points if math.isfinite(v))
    return {
        # one iteration axis for the three, so a test point sits under the loss of its iteration
        "loss": line_chart(loss, title="loss", xlabel="iteration", css_class="chart loss", x_range=x_range),
        "accuracy": line_chart(accuracy, title="test accuracy", xlabel="iteration", y_range=y_acc, x_range=x_range,
                               css_class="chart accuracy", empty_text="no test outputs yet"),
        "lr": line_chart(lr, title="learning rate", xlabel="iteration", ylog=bool(lr) and positive_lr, x_range=x_range,
                         css_class="chart lr", height=160, empty_text="no lr lines in this log"),
    }


def point_counts(info: RunInfo) -> dict[str, int]:
    """How many points each curve has (the card shows them; tests compare them with the SVG)."""
    counts: dict[str, int] = {}
    for k, run in enumerate(info.runs):
        tag = "" if len(info.runs) == 1 else f" (run {k + 1})"
        for name, pts in run.train.items():
            counts[f"train {name}{tag}"] = len(pts)
        for name, pts in run.test.items():
            counts[f"test {name}{tag}"] = len(pts)
    return counts
