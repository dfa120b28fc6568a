"""Find what the board shows under DIR: run logs, grids, databases and deployable models.

Scanned again whenever the board looks (each poll of the live-update loop), so a run, grid or
database that appears under DIR shows up without a restart. What counts:

* a **run** is a training log: a file named like a log (``*.log`` as ``trainer fit`` writes,
  ``*.log.gz``, glog's ``*.INFO``, the SGE job outputs of the transfer study ``*.o123456``,
  ``.gz`` too) whose first TRAINING_HEAD bytes hold a line of training (see `LogSniffer`): our
  run header or device line, Caffe's solver lines, an ``Iteration N`` line. Any other text file
  named ``.log`` (``trainer board DIR > DIR/board.log``, pip's log, ``convert_imageset.INFO``)
  is not a run; one that cannot be read as text (a corrupt gzip, binary junk) stays listed, as it
  may be a damaged training log, and shows its error;
* a **grid** is a folder holding ``grid.json`` (``trainer grid``);
* a **database** is an LMDB folder (``data.mdb``), a LevelDB folder (``CURRENT``), an HDF5
  folder (``list.txt`` beside ``.h5`` files), a sharded database (``shards.json``: one
  database, not its shards) or a ``*.incomplete`` folder that ``datakit
  convert`` is writing (shown as such); database folders are not searched further;
* a **model** is a folder holding a ``*deploy*.prototxt`` and at least one ``.caffemodel``.

Symlinked folders are not followed and a symlinked file counts only when it points inside DIR.
Hidden folders, ``__pycache__`` and virtual environments are skipped; the walk stops after
`max_entries` names so a huge DIR costs a bounded time per look.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from datakit.db import INCOMPLETE_SUFFIX, PROGRESS_NAME
from datakit.db.sharded_backend import SHARDS_NAME

from trainer.board.safety import relative_name

__all__ = ["Found", "scan", "is_run_log", "Stamp", "LogSniffer", "TRAINING_HEAD"]

RUN_LOG = re.compile(r"(\.log|\.INFO|\.o\d+|\.log\.txt)(\.gz)?$")
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}
HDF5_LIST = "list.txt"   # what `datakit convert --backend hdf5` writes beside its .h5 shards

#: (size, mtime_ns) of a file: what changes when a log grows or a database is written.
Stamp = tuple[int, int]


#: How much of a log (decompressed) is looked at for a line of training.
TRAINING_HEAD = 256 * 1024
_CHUNK = 16 * 1024
# Lines that only a training run writes: ours ("trainer fit run N: ...", "Using CPU (NumPy);
# random_seed 1"), Caffe's ("Initializing solver from parameters", "Solving CaffeNet", 2014's
# "Starting Optimization" / "Creating training net") and the iteration lines of both.
_TRAINING_LINE = re.compile(rb"trainer fit run \d+:|\] Using [^\n]*; random_seed \d|Initializing solver"
                            rb"|\] Solving |Creating training net|Starting Optimization|\bIteration \d+")


def is_run_log(name: str) -> bool:
    """Whether a file's name is a log's (the first test; `LogSniffer` then reads its head)."""
    return bool(RUN_LOG.search(name))


class LogSniffer:
    """Whether a log-named file is a training log, read once per change of the file.

    A file found to be a training log stays one while it grows (a log does not stop being one);
    a file that is not one yet (empty, or the first lines of something else) is read again when
    its stamp changes, so a run shows up once its first line is written.
    """

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[Stamp, bool]] = {}

    def is_training_log(self, path: Path, stamp: Stamp) -> bool:
        seen = self._seen.get(path)
        if seen is not None and (seen[0] == stamp or (seen[1] and stamp[0] >= seen[0][0])):
            return seen[1]
        verdict = _sniff(path)
        self._seen[path] = (stamp, verdict)
        return verdict


def _sniff(path: Path) -> bool:
    head = b""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            while len(head) < TRAINING_HEAD:   # a training log says so in its first lines: read on only if not
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                seen = max(0, len(head) - 256)   # a line cut by the last piece's end is searched again
                head += chunk
                if _TRAINING_LINE.search(head, seen):
                    return True
    except (OSError, EOFError, zlib.error):
        return True          # unreadable (a cut or corrupt gzip): listed, its card says why
    if not head:
        return False         # nothing written yet: trainer fit writes its header at once
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:    # not a character cut by the head's end: not text
            return True      # binary junk where a log should be: listed with its error
    return b"\x00" in head  # readable text, no line of training: someone else's log


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
    if SHARDS_NAME in names:   # `datakit convert --cluster`: its shards are one database, as inspect reads it
        return "sharded"
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


def scan(root: Path, *, max_entries: int = 50_000, sniffer: LogSniffer | None = None) -> Found:
    """Walk `root` (already resolved) and return what the board shows (see the module docstring).

    `sniffer` remembers which logs were already read (the board keeps one); a fresh one reads each.
    """
    sniffer = LogSniffer() if sniffer is None else sniffer
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
            stamp = _stamp(path)
            if sniffer.is_training_log(path, stamp):
                found.runs[relative_name(root, path)] = stamp
    return found
