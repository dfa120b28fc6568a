"""`trainer grid summary`: the paper's number for every net of a folder, and per family and n.

A study folder has one sub-folder per net (a grid made by `trainer grid make`, or the authors'
``results/``). A net's kind comes from its ``net.json`` when a grid wrote one, else from its folder
name (trainer.grid.names). Its score is trainer.grid.metric's: the mean of the 10 highest test
top-1 accuracies. A net with no log is listed as missing, not an error; one whose logs have no
test is "untested", with a note saying why where its folder tells (a grid net that finished: which
solver setting kept `trainer fit` from testing after its last iteration). A net with a truncated
gzip log is scored on the lines before the cut, its row's note says so, and `summarize` warns
naming the file (one cut copy among the authors' 354 logs must not stop the whole table).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from datakit.atomic import write_text_atomic
from datakit.errors import ConfigError
from trainer.grid.layout import SNAPSHOT_PREFIX, STATE_FILE, fit_arguments, read_net_spec, why_untested
from trainer.grid.layout import read_json as read_doc
from trainer.grid.metric import TOP_K, read_curve
from trainer.grid.names import FAMILIES, NetKind, classify

NET_FILE = "net.json"


@dataclass
class NetScore:
    """One net's row: what it is, and what its logs say."""

    net: str
    family: str
    n: int | None
    split: str | None
    half: str | None
    per_class: int | None
    score: float | None
    best_accuracy: float | None
    tests: int
    last_iteration: int
    logs: int
    status: str            # "ok", "missing" (no log), "untested" (logs, no test), "partial" (fewer than 10 tests)
    note: str = ""         # for "untested": what the folder says about why; a truncated log, for any status


@dataclass
class GroupScore:
    """The mean score of the nets of one family at one n (or images per class)."""

    family: str
    n: int | None
    per_class: int | None
    nets: int
    scored: int
    mean_score: float | None
    min_score: float | None
    max_score: float | None


def net_kind(folder: Path) -> NetKind:
    """net.json's kind when present (grids), else the folder name's."""
    meta = folder / NET_FILE
    if meta.is_file():
        data = json.loads(meta.read_text(encoding="utf-8"))
        return NetKind(data.get("family", "other"), data.get("n"), data.get("split"), data.get("half"),
                       data.get("per_class"), data.get("source_half"))
    return classify(folder.name)


def net_folders(root: str | os.PathLike) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder (expected a grid or a results folder, one sub-folder per net)")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def score_net(folder: Path, metric: str = "accuracy", top: int = TOP_K) -> NetScore:
    return _score(folder, metric, top)[0]


def truncated_note(paths: list[str]) -> str:
    """The row's note for gzip logs cut short."""
    names = ", ".join(Path(p).name for p in paths)
    return (f"truncated log {names}: scored on the lines before the cut"
            if len(paths) == 1 else f"truncated logs {names}: scored on the lines before each cut")


def truncated_warning(path: str) -> str:
    """The line `summarize` warns with for a gzip log cut short."""
    return (f"warning: {path}: the gzip file is truncated (a partial copy, or a job killed while compressing it); "
            "its lines before the cut were used (`gzip -dc` recovers them)")


def _score(folder: Path, metric: str, top: int) -> tuple[NetScore, set[str], list[str]]:
    """The net's row, the names of the test outputs its logs have (for a --metric none of them has)
    and its truncated logs."""
    kind = net_kind(folder)
    curve = read_curve(folder, metric)
    score = curve.score(top)
    note = ""
    if score is not None:
        status = "partial" if len(curve.tests) < top else "ok"
    elif curve.logs == curve.empty_logs:
        status = "missing"
    elif curve.outputs:
        status = "untested"
        note = f"its logs have no test output {metric!r} (they have {', '.join(sorted(curve.outputs))})"
    else:
        status, note = "untested", untested_note(folder, curve.last_iteration)
    if curve.truncated:
        note = "; ".join(filter(None, (note, truncated_note(curve.truncated))))
    row = NetScore(folder.name, kind.family, kind.n, kind.split, kind.half, kind.per_class, score, curve.best,
                   len(curve.tests), curve.last_iteration, curve.logs, status, note)
    return row, curve.outputs, curve.truncated


def _check_metric(metric: str, rows: list[NetScore], outputs: set[str]) -> None:
    """Refuse a --metric that no net's log has while the logs do have tests: a typo would otherwise
    print a table of untested nets and exit 0."""
    if outputs and not any(row.score is not None for row in rows):
        raise ConfigError(f"--metric {metric!r}: no net's log has this test output; they have "
                          f"{', '.join(sorted(outputs))} (2014 Caffe's 'Test score #0' reads as accuracy)")


def untested_note(folder: Path, last_iteration: int) -> str:
    """Why a net folder whose logs have no test has none: for a grid net that finished (state.json
    "done" or its final snapshot there), the solver setting at fault (layout.why_untested)."""
    if not (folder / NET_FILE).is_file():
        return f"its log has no test accuracy (last iteration {last_iteration})"
    try:
        spec = read_net_spec(folder)
        state = read_doc(folder / STATE_FILE) or {}
    except ConfigError as err:
        return str(err)
    if state.get("state") != "done" and not spec.final_snapshot(folder).is_file():
        return f"not finished, no test yet (last iteration {last_iteration} of {spec.max_iter})"
    why = _solver_reason(folder, spec.max_iter)
    return "finished, but its log has no test accuracy" + (f": {why}" if why else "")


def _solver_reason(folder: Path, max_iter: int) -> str:
    from datakit.errors import DatakitError
    from datakit.formats.prototxt import read_solver

    try:
        solver = read_solver(folder / "solver.prototxt")
    except (OSError, DatakitError):
        return ""
    why = why_untested(solver, max_iter)
    if why and len(solver.test_iter):
        why += " and it was trained without --max-iter (a grid made before `grid run` passed it)"
        final = folder / f"{SNAPSHOT_PREFIX}_iter_{max_iter}.solverstate"
        if final.is_file() and (folder / NET_FILE).is_file():
            args = fit_arguments(read_net_spec(folder), final.relative_to(folder))
            why += f"; test its final weights in {folder.name}/ with: {shlex.join(['trainer', 'fit', *args])}"
    return why


def _order(row: NetScore) -> tuple:
    family = FAMILIES.index(row.family) if row.family in FAMILIES else len(FAMILIES)
    return (family, row.n if row.n is not None else -1, row.per_class or 0, str(row.split), str(row.half), row.net)


def summarize(root: str | os.PathLike, metric: str = "accuracy", jobs: int = 1, top: int = TOP_K,
              progress: bool | None = False, warn: Callable[[str], None] | None = None) -> list[NetScore]:
    """A NetScore for every net folder under `root`, in family, n, name order (`jobs` processes);
    `top` is how many of the best tests the score averages (the paper: 10). `progress`: a bar over
    the folders as ``datakit.report.progress_bar`` decides (the authors' 170 nets take tens of seconds).
    `warn` (default: a line on stderr) hears of each truncated gzip log, after the bar is gone."""
    from datakit.report import progress_bar

    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    if "loss" in metric.lower():
        raise ConfigError(f"--metric {metric!r}: a score is the mean of the highest test values, which for a loss "
                          "are the worst ones; give an accuracy output (default accuracy)")
    folders = net_folders(root)
    if jobs > 1 and len(folders) > 1:
        from datakit.parallel import LocalExecutor, run_all
        with LocalExecutor(jobs) as pool:  # the bar after the fork (tqdm runs a thread)
            bar = progress_bar(len(folders), progress, desc="reading logs", unit="net", leave=False)
            found = run_all(pool, _score, [(folder, metric, top) for folder in folders],
                            on_done=lambda: bar.update(1))
    else:
        bar = progress_bar(len(folders), progress, desc="reading logs", unit="net", leave=False)
        found = []
        for folder in folders:
            found.append(_score(folder, metric, top))
            bar.update(1)
    bar.close()
    if not found:
        raise ConfigError(f"{root}: no net folders inside")
    rows = [row for row, _, _ in found]
    _check_metric(metric, rows, set().union(*(outputs for _, outputs, _ in found)))
    for path in sorted(p for _, _, cut in found for p in cut):
        (warn or _stderr)(truncated_warning(path))
    return sorted(rows, key=_order)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def group(rows: list[NetScore]) -> list[GroupScore]:
    """Per (family, n, per_class): the mean over nets that have a score, with counts."""
    groups: dict[tuple, list[NetScore]] = {}
    for row in rows:
        groups.setdefault((row.family, row.n, row.per_class), []).append(row)
    out = []
    for (family, n, per_class), members in groups.items():
        scores = [r.score for r in members if r.score is not None]
        out.append(GroupScore(family, n, per_class, len(members), len(scores),
                              sum(scores) / len(scores) if scores else None,
                              min(scores) if scores else None, max(scores) if scores else None))
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_table(rows: list[NetScore], groups: list[GroupScore]) -> str:
    """The per-family table (mean score, nets with a score / nets) then the missing nets."""
    lines = [f"{'family':<14} {'n':>4} {'per_class':>9} {'mean':>7} {'min':>7} {'max':>7} {'nets':>9}"]
    for g in groups:
        lines.append(f"{g.family:<14} {'-' if g.n is None else g.n:>4} {g.per_class or '-':>9} "
                     f"{_fmt(g.mean_score):>7} {_fmt(g.min_score):>7} {_fmt(g.max_score):>7} "
                     f"{g.scored:>4} / {g.nets:<3}")
    untested = [r for r in rows if r.status == "untested"]
    if untested:
        lines.append(f"untested (a log, but no test accuracy in it): {len(untested)}:")
        lines += [f"  {r.net}: {r.note}" for r in untested]
    missing = [r.net for r in rows if r.status == "missing"]
    if missing:
        lines.append(f"missing (no log with a test): {len(missing)}: {', '.join(missing)}")
    return "\n".join(lines)


def markdown_table(groups: list[GroupScore]) -> str:
    lines = ["| family | n | images/class | mean score | min | max | nets scored |", "|---|---|---|---|---|---|---|"]
    for g in groups:
        lines.append(f"| {g.family} | {'' if g.n is None else g.n} | {g.per_class or ''} | {_fmt(g.mean_score)} | "
                     f"{_fmt(g.min_score)} | {_fmt(g.max_score)} | {g.scored} / {g.nets} |")
    return "\n".join(lines)


def read_json(path: str | os.PathLike) -> list[NetScore]:
    """The nets of a summary JSON written by `write_json`."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        return [NetScore(**row) for row in doc["nets"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a summary written by `trainer grid summary --json` ({err})") from None


def write_csv(path: str | os.PathLike, rows: list[NetScore]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(asdict(rows[0])), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    write_text_atomic(path, buf.getvalue())


def write_json(path: str | os.PathLike, rows: list[NetScore], groups: list[GroupScore], top: int = TOP_K) -> None:
    doc = {"metric": f"mean of the {top} highest test top-1 accuracies", "nets": [asdict(r) for r in rows],
           "groups": [asdict(g) for g in groups]}
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
