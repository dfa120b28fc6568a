"""Find what the board shows under DIR: run logs, grids, databases and deployable models.

Scanned again whenever the board looks (each poll of the live-update loop), so a run, grid or
database that appears under DIR shows up without a restart. What counts:

* a **run** is a log file: ``*.log`` (what ``trainer fit`` writes), ``*.log.gz``, glog's
  ``*.INFO`` and the SGE job outputs of the transfer study (``*.o123456``, ``.gz`` too);
* a **grid** is a folder holding ``grid.json`` (``trainer grid``);
* a **database** is an LMDB folder (``data.mdb``), a LevelDB folder (``CURRENT``), an HDF5
  folder (``list.txt`` beside ``.h5`` files) or a ``*.incomplete`` folder that ``datakit
  convert`` is writing (shown as such); database folders are not searched further;
* a **model** is a folder holding a ``*deploy*.prototxt`` and at least one ``.caffemodel``.

Symlinked folders are not followed and a symlinked file counts only when it points inside DIR.
Hidden folders, ``__pycache__`` and virtual environments are skipped; the walk stops after
`max_entries` names so a huge DIR costs a bounded time per look.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from datakit.db import INCOMPLETE_SUFFIX, PROGRESS_NAME

from trainer.board.safety import relative_name

__all__ = ["Found", "scan", "is_run_log", "Stamp"]

RUN_LOG = re.compile(r"(\.log|\.INFO|\.o\d+|\.log\.txt)(\.gz)?$")
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}
HDF5_LIST = "list.txt"   # what `datakit convert --backend hdf5` writes beside its .h5 shards

#: (size, mtime_ns) of a file: what changes when a log grows or a database is written.
Stamp = tuple[int, int]


def is_run_log(name: str) -> bool:
    return bool(RUN_LOG.search(name))


@dataclass
class Found:
    """Everything found under the board's folder, as names relative to it (sorted)."""

    runs: dict[str, Stamp] = field(default_factory=dict)
    grids: dict[str, Stamp] = field(default_factory=dict)       # stamp of grid.json
    databases: dict[str, Stamp] = field(default_factory=dict)   # newest stamp inside the folder
    models: dict[str, Stamp] = field(default_factory=dict)      # newest prototxt / caffemodel stamp
    truncated: bool = False

    def fingerprint(self) -> tuple:
        """Changes when anything shown would change (a new item, a grown log, a rewritten database)."""
        return (tuple(sorted(self.runs.items())), tuple(sorted(self.grids.items())),
                tuple(sorted(self.databases.items())), tuple(sorted(self.models.items())))


def _stamp(path: Path) -> Stamp:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def _newest(folder: Path, names: list[str]) -> Stamp:
    stamps = [_stamp(folder / n) for n in names]
    return (sum(s[0] for s in stamps if s[0] > 0), max((s[1] for s in stamps), default=-1))


def _database_kind(dirpath: str, dirnames: list[str], filenames: list[str]) -> str | None:
    names = set(filenames)
    if dirpath.endswith(INCOMPLETE_SUFFIX) and PROGRESS_NAME in names:
        return "incomplete"
    if "data.mdb" in names:
        return "lmdb"
    if "CURRENT" in names and any(n.startswith("MANIFEST-") or n.endswith(".ldb") or n == "LOG" for n in names):
        return "leveldb"
    if HDF5_LIST in names and any(n.endswith(".h5") for n in names):
        return "hdf5"
    return None


def _inside(root: Path, path: Path) -> bool:
    try:
        real = path.resolve()
    except OSError:
        return False
    return real == root or root in real.parents


def scan(root: Path, *, max_entries: int = 50_000) -> Found:
    """Walk `root` (already resolved) and return what the board shows (see the module docstring)."""
    found = Found()
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        seen += len(dirnames) + len(filenames)
        if seen > max_entries:
            found.truncated = True
            dirnames[:] = []
            break
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS
                             and not (here / d / "pyvenv.cfg").exists())
        kind = _database_kind(dirpath, dirnames, filenames)
        if kind is not None and here != root:
            found.databases[relative_name(root, here)] = _newest(here, filenames)
            dirnames[:] = []
            continue
        if "grid.json" in filenames:
            found.grids[relative_name(root, here)] = _stamp(here / "grid.json")
        deploys = [n for n in filenames if n.endswith(".prototxt") and "deploy" in n]
        weights = [n for n in filenames if n.endswith(".caffemodel")]
        if deploys and weights:
            found.models[relative_name(root, here)] = _newest(here, deploys + weights)
        for name in filenames:
            if not is_run_log(name):
                continue
            path = here / name
            if path.is_symlink() and not _inside(root, path):
                continue
            found.runs[relative_name(root, path)] = _stamp(path)
    return found
