"""`grid_status`: where every net of a grid stands, read from its files only (safe while a runner runs).

States: "done" (final snapshot and state.json done), "running" (running.json names a live process),
"failed" / "skipped" (the last run said so, with its reason), "waiting" (not started, or interrupted,
cleanly or by a kill that left its files behind: the next `trainer grid run` resumes it from its last
snapshot, and the note says which).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from datakit.errors import ConfigError
from trainer.grid.layout import (GRID_FILE, LOG_FILE, RUNNING_FILE, STATE_FILE, is_done, latest_solverstate,
                                 log_iteration, pid_alive, read_grid, read_json)
from trainer.grid.metric import NetCurve, read_curve
from trainer.grid.summary import truncated_note, untested_note

STATES = ("done", "running", "waiting", "failed", "skipped")


@dataclass
class NetStatus:
    """One net of a grid as a dashboard shows it."""

    net: str
    family: str
    n: int | None
    split: str | None
    state: str                       # one of STATES
    iteration: int
    best_accuracy: float | None
    score: float | None              # the paper's metric: mean of the 10 best test top-1 accuracies
    half: str | None = None
    max_iter: int = 0
    needs: str | None = None
    reason: str | None = None        # why failed / skipped; for a done net without a test score, why
    pid: int | None = None           # the training process while running


def is_grid(path: str | os.PathLike) -> bool:
    """True when `path` is a folder with a grid.json written by `trainer grid make`."""
    try:
        read_grid(path)
    except (ConfigError, OSError):
        return False
    return (Path(path) / GRID_FILE).is_file()


_CURVES: dict[Path, tuple[tuple[int, int], NetCurve]] = {}


def _curve(folder: Path) -> NetCurve:
    """read_curve, cached on the log's size and mtime (dashboards poll)."""
    log = folder / LOG_FILE
    try:
        st = log.stat()
        key = (st.st_size, st.st_mtime_ns)
    except FileNotFoundError:
        key = (-1, -1)
    cached = _CURVES.get(folder)
    if cached and cached[0] == key:
        return cached[1]
    curve = read_curve(folder)
    _CURVES[folder] = (key, curve)
    return curve


def grid_status(grid_dir: str | os.PathLike) -> list[NetStatus]:
    """A NetStatus for every net, in the grid's run order."""
    root = Path(grid_dir)
    _, specs = read_grid(root)
    out = []
    done = {spec.name for spec in specs if is_done(root / spec.name, spec)}
    for spec in specs:
        folder = root / spec.name
        state_doc = read_json(folder / STATE_FILE) or {}
        running = read_json(folder / RUNNING_FILE)
        pid = int(running["pid"]) if running and "pid" in running else None
        reason = None
        snap = latest_solverstate(folder)
        if is_done(folder, spec):
            state = "done"
        elif pid is not None and pid_alive(pid):
            state = "running"
        elif state_doc.get("state") in ("failed", "skipped"):
            state, reason = state_doc["state"], state_doc.get("reason")
        else:
            state, dead, pid = "waiting", pid, None   # dead: a running.json whose process is gone
            if state_doc.get("state") == "interrupted":  # what the runner wrote when it was stopped
                reason = f"{state_doc.get('reason') or 'interrupted'}; the next grid run resumes it"
            elif dead is not None or snap:  # a runner killed (-9) wrote no state: its files say so
                ended = f"its run (pid {dead}) ended without a word" if dead is not None else "stopped"
                where = f"at its snapshot of iteration {snap[0]}" if snap else "from the start"
                reason = f"{ended}; the next grid run resumes it {where}"
            elif spec.needs and spec.needs not in done:
                reason = f"needs {spec.needs}"
            else:
                reason = "ready"  # its base net is done (or it has none): the next grid run starts it
        curve = _curve(folder)
        iteration = max(log_iteration(folder), snap[0] if snap else 0)
        if state == "done" and curve.score() is None:
            reason = untested_note(folder, iteration)  # a finished net `grid summary` cannot score
        if curve.truncated:  # its score is from the lines before the cut, as `grid summary` says too
            reason = "; ".join(filter(None, (reason, truncated_note(curve.truncated))))
        out.append(NetStatus(spec.name, spec.family, spec.n, spec.split, state, iteration, curve.best, curve.score(),
                             spec.half, spec.max_iter, spec.needs, reason, pid if state == "running" else None))
    return out


def format_status(rows: list[NetStatus]) -> str:
    lines = [f"{'net':<26} {'family':<13} {'n':>2} {'state':<8} {'iteration':>15} {'best':>7} {'score':>7}  note"]
    for r in rows:
        its = f"{r.iteration}/{r.max_iter}"
        best = "-" if r.best_accuracy is None else f"{r.best_accuracy:.4f}"
        score = "-" if r.score is None else f"{r.score:.4f}"
        note = r.reason or (f"needs {r.needs}" if r.state == "waiting" and r.needs else "")
        lines.append(f"{r.net:<26} {r.family:<13} {'-' if r.n is None else r.n:>2} {r.state:<8} {its:>15} "
                     f"{best:>7} {score:>7}  {note}")
    counts = {s: sum(r.state == s for r in rows) for s in STATES}
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items()))
    return "\n".join(lines)
