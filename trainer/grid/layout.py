"""The files of a grid folder, the contract between `grid make`, `grid run`, `grid status` and dashboards.

::

    GRID/grid.json                 {"format": "datakit-grid", "version": 1, "nets": [names in run order], ...}
    GRID/<net>/net.json            what the net is (family, n, split, half, ...), what it needs (a base
                                   net whose final snapshot it copies), max_iter, its `trainer fit` command
    GRID/<net>/command.sh          that command with --max-iter (fit_arguments), runnable by hand from the
                                   net folder
    GRID/<net>/solver.prototxt, train_val.prototxt
    GRID/<net>/snapshots/net_iter_N.caffemodel / .solverstate
    GRID/<net>/train.log           Caffe-format log (appended by every run of the net)
    GRID/<net>/fit.out             what `trainer fit` printed (the error line of a failed run)
    GRID/<net>/running.json        while a runner trains the net: {"pid": ..., "started": ...}
    GRID/<net>/state.json          after a run: {"state": "done" | "failed" | "skipped" | "interrupted", ...}

Every JSON file is written atomically. A net is done when state.json says so and its final
snapshot exists; everything a runner needs to resume is on disk, nothing in memory.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datakit.atomic import write_text_atomic
from datakit.errors import ConfigError

GRID_FILE = "grid.json"
NET_FILE = "net.json"
STATE_FILE = "state.json"
RUNNING_FILE = "running.json"
LOG_FILE = "train.log"
OUT_FILE = "fit.out"
SNAPSHOT_PREFIX = "snapshots/net"
GRID_FORMAT = "datakit-grid"


@dataclass
class NetSpec:
    """net.json: one net of a grid. `weights` and `needs` are None for nets trained from scratch."""

    name: str
    family: str
    n: int | None
    split: str | None
    half: str | None
    max_iter: int
    source_half: str | None = None
    per_class: int | None = None
    needs: str | None = None           # the net whose final snapshot `weights` is
    weights: str | None = None         # relative to this net's folder
    command: list[str] = field(default_factory=list)

    def final_snapshot(self, folder: Path) -> Path:
        return folder / f"{SNAPSHOT_PREFIX}_iter_{self.max_iter}.caffemodel"


def fit_arguments(spec: NetSpec, resume: str | os.PathLike | None = None) -> list[str]:
    """The arguments of `trainer fit` that train the net: its command (less ``trainer fit``), with
    ``--max-iter <max_iter>`` added when the command has none; resuming from the solverstate
    `resume`, ``--snapshot resume`` replaces ``--weights``.

    Why: Caffe (and `trainer fit` without --max-iter) tests after the last iteration only when
    test_interval divides max_iter; a grid made with ``--max-iter 25`` over a solver testing every
    10 iterations would lose the test of its final weights, and with ``--max-iter 7`` (and no
    test_initialization) a net would never be tested, so `grid summary` would have no score.
    ``trainer fit --max-iter`` always tests after the last iteration, so every net a grid trains
    ends with a test. Grids made before command.sh carried the flag get it here too, from
    net.json's max_iter."""
    args = list(spec.command[2:]) if spec.command[:2] == ["trainer", "fit"] else list(spec.command)
    if "--max-iter" not in args:
        args += ["--max-iter", str(spec.max_iter)]
    if resume is not None:
        if "--weights" in args:
            i = args.index("--weights")
            del args[i:i + 2]
        args += ["--snapshot", str(resume)]
    return args


def why_untested(solver, max_iter: int | None = None) -> str:
    """Why a run of the SolverParameter `solver` to `max_iter` (default its own) without --max-iter
    logs no test after its last iteration; "" when it does (Caffe's rule, see fit_arguments)."""
    max_iter = int(solver.max_iter if max_iter is None else max_iter)
    if not len(solver.test_iter):
        return "its solver has no test_iter (no test net)"
    if not solver.test_interval:
        return "its solver's test_interval is 0"
    if max_iter % solver.test_interval:
        return f"test_interval {solver.test_interval} does not divide max_iter {max_iter}"
    return ""


def write_json(path: Path, doc: dict) -> None:
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n", fsync=False)


def read_json(path: Path) -> dict | None:
    """The JSON object at `path`; None when absent; ConfigError naming the file when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return doc


def read_net_spec(folder: Path) -> NetSpec:
    doc = read_json(folder / NET_FILE)
    if doc is None:
        raise ConfigError(f"{folder / NET_FILE}: missing (is {folder} a net folder of a grid?)")
    try:
        return NetSpec(**doc)
    except TypeError as err:
        raise ConfigError(f"{folder / NET_FILE}: unexpected content ({err})") from None


def write_net_spec(folder: Path, spec: NetSpec) -> None:
    write_json(folder / NET_FILE, asdict(spec))


def read_grid(grid_dir: str | os.PathLike) -> tuple[dict, list[NetSpec]]:
    """grid.json and the net.json of every net it lists, in run order."""
    root = Path(grid_dir)
    meta = read_json(root / GRID_FILE)
    if meta is None or meta.get("format") != GRID_FORMAT or not isinstance(meta.get("nets"), list):
        raise ConfigError(f"{root}: not a grid (no {GRID_FILE} written by `trainer grid make`)")
    return meta, [read_net_spec(root / name) for name in meta["nets"]]


def is_done(folder: Path, spec: NetSpec) -> bool:
    state = read_json(folder / STATE_FILE)
    return bool(state and state.get("state") == "done") and spec.final_snapshot(folder).is_file()


_ITER = re.compile(r"_iter_(\d+)\.solverstate$")


def latest_solverstate(folder: Path) -> tuple[int, Path] | None:
    """(iteration, path) of the newest snapshot state in the net's snapshots folder."""
    snaps = folder / Path(SNAPSHOT_PREFIX).parent
    found = []
    if snaps.is_dir():
        for p in snaps.iterdir():
            m = _ITER.search(p.name)
            if m and p.with_suffix(".caffemodel").is_file():
                found.append((int(m.group(1)), p))
    return max(found) if found else None


def pid_alive(pid: int) -> bool:
    """True while process `pid` runs (a zombie, exited but not yet reaped, counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal test is all we have
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def log_tail(path: Path, lines: int = 8, max_bytes: int = 16384) -> list[str]:
    """The last `lines` lines of a text file (empty when absent), read from its end only."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


_LOG_ITER = re.compile(r"iteration (\d+)", re.I)


def log_iteration(folder: Path) -> int:
    """The last iteration named in the net's log (read from its end); 0 when none."""
    for line in reversed(log_tail(folder / LOG_FILE, lines=50)):
        m = _LOG_ITER.search(line)
        if m:
            return int(m.group(1))
    return 0
