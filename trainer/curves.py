"""Read training curves out of Caffe-format logs (ours and real Caffe logs) and plot them.

Parsing goes by message text, never by glog's source file:line (those differ
between Caffe builds). Quirks handled, all seen in real 2014 logs:
- glog prefixes with a thread id padded to 5 columns (two spaces before a 4-digit id),
  and non-glog lines (job headers, stack traces, shell messages) that are skipped;
- 2014 test results as ``Test score #0: X`` / ``Test score #1: Y`` (the old accuracy
  layer reported accuracy then loss), modern ones as ``Test net output #k: NAME = X``;
- ``loss = 2`` printed without a decimal point, and ``nan`` / ``inf`` / ``-nan``;
- modern Caffe's ``Iteration N (x iter/s, ...), loss = X``;
- restarts: when the iteration goes back (a job restarted in the same file), a new
  run segment begins, so curves are never drawn zig-zagging back in time;
- our runs: ``trainer fit`` starts each run with a ``trainer fit run N: HOW`` line, and
  every such line begins a segment. A run "resuming from S" is linked to the run that
  logged writing S (``Run.continues``) and drawn in its colour, never glued onto
  whichever run happened to come before it in the file.
Gzip files are read transparently.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator

from datakit.errors import FormatError

#: names given to 2014 ``Test score #k`` values (old Caffe's accuracy layer: accuracy, then loss).
LEGACY_SCORE_NAMES = {0: "accuracy", 1: "loss"}

_NUM = r"([-+]?(?:nan|inf|infinity|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))"
_ITER = r"Iteration (\d+)(?: \([^)]*\))?"
RE_LOSS = re.compile(_ITER + r", loss = " + _NUM, re.I)
RE_LR = re.compile(_ITER + r", lr = " + _NUM, re.I)
RE_TESTING = re.compile(r"Iteration (\d+), Testing net(?: \(#(\d+)\))?")
RE_TEST_OUT = re.compile(r"Test net output #(\d+): (\S+) = " + _NUM, re.I)
RE_TRAIN_OUT = re.compile(r"Train net output #(\d+): (\S+) = " + _NUM, re.I)
RE_SCORE = re.compile(r"Test score #(\d+): " + _NUM, re.I)
RE_TEST_LOSS = re.compile(r"Test loss: " + _NUM, re.I)
RE_RUN = re.compile(r"(?:^|\] )trainer fit run (\d+): (.*)$")
RE_RESUMING = re.compile(r"^resuming from (\S+)")
RE_SNAPSHOT = re.compile(r"Snapshotting solver state to (?:binary proto|HDF5) file (\S+)")
RE_STAMP = re.compile(r"^[IWEF](\d{4} \d\d:\d\d:\d\d\.\d+) ")


def _num(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


@dataclass(repr=False)
class Run:
    """One uninterrupted stretch of training in a log (iterations never go back inside it).

    Its repr is `trainer plot`'s one summary line, not the points: ``trainer.plot(...)`` as a
    notebook cell's last line shows the runs it returns, and a 2014 ImageNet log holds tens of
    thousands of points per series.
    """

    source: str
    index: int
    train: dict[str, list[tuple[int, float]]] = field(default_factory=dict)   # "loss", "lr", "output NAME"
    test: dict[str, list[tuple[int, float]]] = field(default_factory=dict)    # "accuracy", "loss", ...
    number: int | None = None           # N of a ``trainer fit run N:`` header
    how: str = ""                       # the rest of that header (from scratch, resuming from S, ...)
    continues: int | None = None        # the number of the run whose snapshot this one resumed
    snapshots: list[str] = field(default_factory=list)  # solverstates this run logged writing

    @property
    def name(self) -> int:
        """The run's number: its header's, else its place in the file (from 1)."""
        return self.number if self.number is not None else self.index + 1
    #: glog time stamp ("MMDD HH:MM:SS.micro", no year) of the run's first glog line, None if none had one
    started: str | None = None

    @property
    def label(self) -> str:
        text = self.source if self.name == 1 else f"{self.source} (run {self.name})"
        if self.continues is not None:
            text += f" resumes run {self.continues}"
        return text

    def __repr__(self) -> str:
        return f"<Run {summary([self])}>"

    @property
    def last_iteration(self) -> int:
        """The highest iteration with a train or test point (-1 for an empty run)."""
        its = [pts[-1][0] for pts in list(self.train.values()) + list(self.test.values()) if pts]
        return max(its) if its else -1

    def add_train(self, name: str, it: int, value: float) -> None:
        self.train.setdefault(name, []).append((it, value))

    def add_test(self, name: str, it: int, value: float) -> None:
        self.test.setdefault(name, []).append((it, value))

    def empty(self) -> bool:
        return not any(self.train.values()) and not any(self.test.values())


#: what a cut gzip log is and how to get its lines back (gzip's EOFError says neither)
TRUNCATED_GZIP = ("the gzip file is truncated (a partial copy, or a job killed while compressing it); "
                  "`gzip -dc` recovers the lines before the cut")


def open_text(path: str | Path, on_truncated: Callable[[Path], None] | None = None) -> Iterator[str]:
    """Lines of a plain or gzip log, undecodable bytes replaced (logs hold odd binary junk).

    A gzip file cut short yields every whole line before the cut (io.TextIOWrapper drops the line
    the cut went through when gzip raises, so no number is read half-written), then raises
    FormatError naming the file; with `on_truncated`, it calls ``on_truncated(path)`` and ends
    instead: for a reader of many logs that uses what there is and reports the file
    (trainer.grid.metric.read_curve).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            yield from f
    except OSError as err:
        raise FormatError(f"{path}: cannot read log: {err}") from err
    except zlib.error as err:  # damaged inside (a bad copy): what it yields may already be wrong
        raise FormatError(f"{path}: cannot read log: the gzip data is corrupt ({err})") from None
    except EOFError:  # gzip's "Compressed file ended before the end-of-stream marker was reached"
        if on_truncated is None:
            raise FormatError(f"{path}: cannot read log: {TRUNCATED_GZIP}") from None
        on_truncated(path)


class EmptyLogError(FormatError):
    """A log with no Caffe training line at all (the authors' 49-byte empty gzip files): a study
    skips it, whereas a log that cannot be read is an error."""


def parse_lines(lines: Iterable[str], source: str = "log") -> list[Run]:
    """Split a log into runs and collect train loss, lr, train outputs and test outputs."""
    runs: list[Run] = [Run(source, 0)]
    last_train_it = -1
    test_it: int | None = None
    test_net = 0

    def current() -> Run:
        return runs[-1]

    def restart_if_back(it: int) -> None:
        nonlocal last_train_it
        if it < last_train_it and not current().empty():
            runs.append(Run(source, len(runs), number=None, started=stamp))
        last_train_it = it

    stamp: str | None = None
    for line in lines:
        m = RE_STAMP.match(line)
        if m:
            stamp = m.group(1)
            if current().started is None or current().empty():
                current().started = stamp
        if "trainer fit run " in line:
            m = RE_RUN.search(line.rstrip("\n"))
            if m:
                if not current().empty():
                    runs.append(Run(source, len(runs), started=stamp))
                run = current()
                run.number, run.how = int(m.group(1)), m.group(2).strip()
                resumed = RE_RESUMING.match(run.how)
                if resumed:
                    run.continues = _writer_of(resumed.group(1), runs[:-1])
                last_train_it, test_it, test_net = -1, None, 0
                continue
        if "Snapshotting solver state to" in line:
            m = RE_SNAPSHOT.search(line)
            if m:
                current().snapshots.append(m.group(1))
                continue
        if "Iteration" in line:
            m = RE_LOSS.search(line)
            if m:
                it = int(m.group(1))
                restart_if_back(it)
                current().add_train("loss", it, _num(m.group(2)))
                continue
            m = RE_LR.search(line)
            if m:
                it = int(m.group(1))
                restart_if_back(it)
                current().add_train("lr", it, _num(m.group(2)))
                continue
            m = RE_TESTING.search(line)
            if m:
                it = int(m.group(1))
                restart_if_back(it)
                test_it = it
                test_net = int(m.group(2) or 0)
                continue
        if "output #" in line:
            m = RE_TRAIN_OUT.search(line)
            if m:
                it = last_train_it
                current().add_train(f"output {m.group(2)}", it, _num(m.group(3)))
                continue
            m = RE_TEST_OUT.search(line)
            if m and test_it is not None:
                name = m.group(2) if test_net == 0 else f"{m.group(2)} (net #{test_net})"
                current().add_test(name, test_it, _num(m.group(3)))
                continue
        if "Test score #" in line:
            m = RE_SCORE.search(line)
            if m and test_it is not None:
                k = int(m.group(1))
                current().add_test(LEGACY_SCORE_NAMES.get(k, f"score #{k}"), test_it, _num(m.group(2)))
                continue
        if "Test loss:" in line:
            m = RE_TEST_LOSS.search(line)
            if m and test_it is not None:
                current().add_test("loss", test_it, _num(m.group(1)))
    return [r for r in runs if not r.empty()]


def _writer_of(solverstate: str, earlier: list[Run]) -> int | None:
    """The number of the latest earlier run that logged writing ``solverstate`` (same path or name)."""
    name = Path(solverstate).name
    for run in reversed(earlier):
        if solverstate in run.snapshots:
            return run.name
    for run in reversed(earlier):
        if any(Path(s).name == name for s in run.snapshots):
            return run.name
    return None


def parse_log(path: str | os.PathLike, on_truncated: Callable[[Path], None] | None = None) -> list[Run]:
    """Every run found in one log file (plain or .gz); a truncated .gz is a FormatError, or with
    `on_truncated` the runs of its lines before the cut (see open_text)."""
    path = Path(path)
    runs = parse_lines(open_text(path, on_truncated), source=path.name)
    if not runs:
        raise EmptyLogError(f"{path}: no Caffe training lines found (expected 'Iteration N, loss = X')")
    return runs


def _split_outputs(runs: list[Run]) -> tuple[set[str], set[str]]:
    test_names = {n for r in runs for n in r.test}
    acc = {n for n in test_names if "acc" in n.lower()}
    return acc, test_names - acc


def plot(logs: Iterable[str | os.PathLike], out: str | os.PathLike, *, title: str | None = None) -> Path:
    """Draw train loss, test loss, test accuracy and lr against iteration into a PNG."""
    return plot_runs([run for log in logs for run in parse_log(log)], out, title=title)


def _lone(its: tuple) -> str | None:
    """A marker for a series of one point, which a plain line draws as nothing at all.

    A short run (fewer iterations than two ``display`` intervals, a first trial with
    ``--max-iter``) has one train-loss and one lr point; it was listed in the legend and
    missing from the chart. Longer series keep the plain line.
    """
    return "o" if len(its) == 1 else None


def plot_runs(runs: list[Run], out: str | os.PathLike, *, title: str | None = None) -> Path:
    """:func:`plot` of logs already parsed (a 2014 log takes seconds to parse: parse it once)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from datakit.atomic import write_bytes_atomic

    acc_names, loss_names = _split_outputs(runs)
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour_of: dict[tuple[str, int], str] = {}
    for run in runs:  # a resumed run takes the colour of the run it continues
        root = colour_of.get((run.source, run.continues)) if run.continues is not None else None
        colour_of[(run.source, run.name)] = root or colours[len(set(colour_of.values())) % len(colours)]
    for run in runs:
        c = colour_of[(run.source, run.name)]
        if run.train.get("loss"):
            its, vals = zip(*run.train["loss"])
            ax_loss.plot(its, vals, color=c, lw=0.8, alpha=0.8, label=f"{run.label} train loss", marker=_lone(its))
        for name in sorted(loss_names & set(run.test)):
            its, vals = zip(*run.test[name])
            ax_loss.plot(its, vals, color=c, lw=1.6, ls="--", marker=".", label=f"{run.label} test {name}")
        for name in sorted(acc_names & set(run.test)):
            its, vals = zip(*run.test[name])
            ax_acc.plot(its, vals, color=c, marker=".", label=f"{run.label} {name}")
        if run.train.get("lr"):
            its, vals = zip(*run.train["lr"])
            ax_lr.plot(its, vals, color=c, label=run.label, drawstyle="steps-post", marker=_lone(its))
    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("test accuracy")
    acc_values = [v for run in runs for n in acc_names & set(run.test) for _, v in run.test[n]]
    if acc_values and all(0 <= v <= 1 for v in acc_values):
        ax_acc.set_ylim(0, 1.02)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    if any(run.train.get("lr") and min(v for _, v in run.train["lr"]) > 0 for run in runs):
        ax_lr.set_yscale("log")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title or ", ".join(sorted({r.source for r in runs})), fontsize=10)
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    out = Path(out)
    write_bytes_atomic(out, buf.getvalue())
    return out


def summary(runs: list[Run]) -> str:
    """A one-line-per-run text summary (what `trainer plot` prints)."""
    lines = []
    for run in runs:
        loss = run.train.get("loss", [])
        parts = [f"{run.label}: iterations {loss[0][0]}..{loss[-1][0]}" if loss else f"{run.label}:"]
        parts.append(f"{len(loss)} loss points")
        if run.how:
            parts.append(run.how)
        for name, pts in sorted(run.test.items()):
            parts.append(f"test {name} {len(pts)} points, last {pts[-1][1]:.6g} @ {pts[-1][0]}")
        lines.append("; ".join(parts))
    return "\n".join(lines)
