"""The paper's number for one net: the mean of its 10 highest test top-1 accuracies over the run.

All the logs of a net folder are read together (ours: ``Test net output #0: accuracy = X``;
2014 Caffe: ``Test score #0: X``, top-1, ``#1`` the loss). Each log splits into runs where the
iteration goes back (a second job restarting inside one file); runs are ordered by their first
glog time stamp (file order where a run has none: logs have no year, so a study must not span a
New Year), and where runs overlap the later run's test at an iteration wins. A job killed right after
"Testing net" leaves that test without a score: nothing is counted for it. Empty logs (the authors'
49-byte gzip files) are skipped. A truncated gzip log (a partial copy, a job killed while compressing
it) gives its lines before the cut and is listed in ``NetCurve.truncated``, so that one cut file
among hundreds neither stops a study's table nor goes unreported; an unreadable log is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

TOP_K = 10
_LOG_NAME = re.compile(r"(\.o\d+|\.oMANUAL|\.log)(\.gz)?$")


def log_files(folder: str | Path) -> list[Path]:
    """The training logs of a net folder: ``*.log``, Sun Grid Engine ``*.o<job>`` (optionally .gz)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_file() and _LOG_NAME.search(p.name)]
    return sorted(found, key=_log_order)


def _log_order(path: Path) -> tuple:
    m = re.search(r"\.o(\d+)", path.name)
    return (int(m.group(1)) if m else -1, path.name)


@dataclass
class NetCurve:
    """The merged test curve of one net: {iteration: top-1 accuracy}, with what was read."""

    tests: dict[int, float] = field(default_factory=dict)
    logs: int = 0
    empty_logs: int = 0
    runs: int = 0
    last_iteration: int = -1
    outputs: set[str] = field(default_factory=set)   # every test output the logs name (accuracy, loss, ...)
    truncated: list[str] = field(default_factory=list)  # gzip logs cut short: only their lines before the cut

    def score(self, k: int = TOP_K) -> float | None:
        """Mean of the k highest accuracies (of all there are when fewer); None without a test."""
        values = sorted((v for v in self.tests.values() if v == v), reverse=True)[:k]
        return sum(values) / len(values) if values else None

    @property
    def best(self) -> float | None:
        values = [v for v in self.tests.values() if v == v]
        return max(values) if values else None


def read_curve(folder: str | Path, metric: str = "accuracy") -> NetCurve:
    """Merge the `metric` test values of every log in `folder` (see the module docstring)."""
    from trainer.curves import EmptyLogError, parse_log

    curve = NetCurve()
    runs = []
    for position, path in enumerate(log_files(folder)):
        curve.logs += 1
        try:
            found = parse_log(path, on_truncated=lambda cut: curve.truncated.append(str(cut)))
        except EmptyLogError:  # an unreadable log is an error naming it, never skipped silently
            curve.empty_logs += 1
            continue
        for run in found:
            runs.append((run.started is None, run.started or "", position, run.index, run))
    for run in _chronological(runs):
        curve.runs += 1
        curve.last_iteration = max(curve.last_iteration, run.last_iteration)
        curve.outputs.update(name for name, values in run.test.items() if values)
        for it, value in run.test.get(metric, []):
            curve.tests[it] = value
    return curve


def _chronological(runs: list[tuple]) -> list:
    """Runs by time stamp; runs without one keep their file order after those that have one."""
    stamped = sorted((item for item in runs if not item[0]), key=lambda item: (item[1], item[2], item[3]))
    unstamped = sorted((item for item in runs if item[0]), key=lambda item: (item[2], item[3]))
    return [item[4] for item in stamped + unstamped]
