"""Snapshots: ``<prefix>_iter_N.caffemodel`` + ``.solverstate`` (+ our resume sidecar).

The .caffemodel and .solverstate are Caffe's own formats (NetParameter with
blobs; SolverState with iter, learned_net, history, current_step), so Caffe can
resume our runs and we can resume Caffe's. With ``snapshot_format: HDF5`` they are
Caffe's ``.caffemodel.h5`` / ``.solverstate.h5`` instead
(:mod:`datakit.formats.hdf5_snapshot`). Exact resumption needs more than
Caffe saves: the random generator of the net (Dropout), how many batches each
data layer has consumed, the seed of each data layer and the window of recent
losses behind the displayed average. That goes in a small JSON file beside the
solverstate, ``<solverstate>.json`` (JSON: no pickle). A Caffe solverstate without
it still resumes, with data read from the start as Caffe does.

A snapshot is a set of three files that appear together or not at all (as far as a
reader can tell): all three are written in full to temporary names first (so a
full disk fails before any final name changes, and the temporaries are removed);
then an old solverstate of the same name is removed, and the files are renamed in
the order weights, sidecar, solverstate. The solverstate is the commit mark: where
it exists, the weights and sidecar beside it are the ones written with it. A
weights file or sidecar without its solverstate is an incomplete snapshot (a run
killed between two renames); :func:`find_snapshots` reports those apart and
:func:`read_solverstate` explains them.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datakit.atomic import _default_mode
from datakit.errors import DatakitError, FormatError
from datakit.formats import caffe_pb2
from datakit.formats.blobproto import array_to_blob, blob_to_array
from datakit.formats.hdf5_snapshot import read_solverstate_any, write_caffemodel_h5, write_solverstate_h5

STATE_FORMAT = "datakit-trainstate/1"
#: room counted per file beyond its bytes (file-system blocks, HDF5's own structures)
_SLACK = 64 * 1024


class SnapshotError(DatakitError):
    """A snapshot could not be written (full disk, permissions); nothing of it was left behind."""


@dataclass
class SnapshotPaths:
    caffemodel: Path
    solverstate: Path
    sidecar: Path


def snapshot_paths(prefix: str, it: int, *, hdf5: bool = False) -> SnapshotPaths:
    """Caffe's names: prefix + "_iter_" + N + ".caffemodel" / ".solverstate" (+ ".h5" for HDF5)."""
    base = f"{prefix}_iter_{it}"
    ext = ".h5" if hdf5 else ""
    state = Path(base + ".solverstate" + ext)
    return SnapshotPaths(Path(base + ".caffemodel" + ext), state, Path(str(state) + ".json"))


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def free_bytes(folder: Path) -> int:
    """Bytes this process may still write in ``folder``'s file system (root may use the reserve)."""
    st = os.statvfs(folder)
    blocks = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return int(blocks) * int(st.f_frsize)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_bytes(data: bytes) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return write


def _fsynced(write: Callable[[Path], None]) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return run


def commit_files(files: list[tuple[Path, Callable[[Path], None]]], needed: int, what: str,
                 stale: tuple[Path, ...] = ()) -> None:
    """Write every file to a temporary beside it, then rename all in order; the last is the commit mark.

    ``needed`` is the space the set takes; when the file system has less, nothing is
    written. ``stale`` files (an old sidecar that this set has no new one for) are removed
    with the old mark. A write that still fails (ENOSPC at write, fsync or close) removes every
    temporary, so no final name changes. Raises :class:`SnapshotError` naming ``what``.
    """
    folder = files[0][0].parent
    folder.mkdir(parents=True, exist_ok=True)
    for final, _ in files:  # temporaries of a write killed outright (SIGKILL, power) would hold space forever
        for old in folder.glob(glob.escape(f".{final.name}.") + "*.part"):
            with contextlib.suppress(OSError):
                old.unlink()
    free = free_bytes(folder)
    if free < needed:
        raise SnapshotError(f"{what}: not enough space for the snapshot: it needs {_mb(needed)}, "
                            f"{_mb(free)} free in {folder}; nothing was written")
    tmps: list[Path] = []
    try:
        for final, write in files:
            tmp = final.with_name(f".{final.name}.{os.getpid()}.part")
            tmps.append(tmp)
            write(tmp)
            os.chmod(tmp, _default_mode())
        # The old mark goes first: while the parts change, no reader trusts a mixed set.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(files[-1][0])
        for old in stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)
        for (final, _), tmp in zip(files, tmps):
            os.replace(tmp, final)
        _fsync_dir(folder)
    except BaseException as err:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise SnapshotError(f"{what}: no space left on device while writing the snapshot: it needs "
                                f"{_mb(needed)}, {_mb(free_bytes(folder))} free in {folder}; "
                                "nothing of it was kept") from None
        if isinstance(err, OSError):
            raise SnapshotError(f"{what}: cannot write the snapshot: {err.strerror or err}") from None
        raise


def write_snapshot(prefix: str, it: int, net_param: caffe_pb2.NetParameter, history: list[np.ndarray],
                   current_step: int, extra: dict[str, Any] | None = None, *, hdf5: bool = False,
                   write_diff: bool = False) -> SnapshotPaths:
    """Write the weights, the solver state and the resume sidecar for iteration ``it`` (see the module doc)."""
    paths = snapshot_paths(prefix, it, hdf5=hdf5)
    state = caffe_pb2.SolverState(iter=it, learned_net=str(paths.caffemodel), current_step=current_step)
    for h in history:
        state.history.append(array_to_blob(np.asarray(h, dtype=np.float32)))
    files: list[tuple[Path, Callable[[Path], None]]] = []
    if hdf5:
        weights = sum(len(b.data) + len(b.double_data) for layer in net_param.layer for b in layer.blobs) * 4
        files.append((paths.caffemodel, _fsynced(lambda tmp: write_caffemodel_h5(tmp, net_param,
                                                                                  write_diff=write_diff))))
        needed = weights * (2 if write_diff else 1) + 4 * int(sum(np.asarray(h).size for h in history))
    else:
        model_bytes = net_param.SerializeToString()
        files.append((paths.caffemodel, _write_bytes(model_bytes)))
        needed = len(model_bytes) + state.ByteSize()
    if extra is not None:
        sidecar = json.dumps({"format": STATE_FORMAT, **extra}, indent=1).encode("utf-8")
        files.append((paths.sidecar, _write_bytes(sidecar)))
        needed += len(sidecar)
    if hdf5:
        files.append((paths.solverstate, _fsynced(lambda tmp: write_solverstate_h5(tmp, state))))
    else:
        files.append((paths.solverstate, _write_bytes(state.SerializeToString())))
    # Without a sidecar of its own, an old one of the same name must not be taken for this snapshot's.
    stale = (paths.sidecar,) if extra is None else ()
    commit_files(files, needed + _SLACK * len(files), str(paths.solverstate), stale)
    return paths


@dataclass
class Snapshots:
    """What a snapshot prefix holds: complete snapshots by iteration, and incomplete leftovers."""

    complete: list[tuple[int, Path]]     # (iteration, solverstate), oldest first
    incomplete: list[Path]               # weights or sidecars whose solverstate is missing

    @property
    def latest(self) -> Path | None:
        return self.complete[-1][1] if self.complete else None


_SNAP_NAME = re.compile(r"_iter_(\d+)\.(caffemodel|solverstate)(\.h5)?(\.json)?")


def find_snapshots(prefix: str) -> Snapshots:
    """Every ``<prefix>_iter_N.*`` snapshot file, sorted into complete sets and leftovers."""
    states: dict[str, int] = {}
    parts: list[tuple[Path, str]] = []   # (file, the solverstate it belongs to)
    for name in glob.glob(glob.escape(prefix) + "_iter_*"):
        m = _SNAP_NAME.fullmatch(name[len(prefix):])
        if not m:
            continue
        state = f"{prefix}_iter_{m.group(1)}.solverstate{m.group(3) or ''}"
        if m.group(2) == "solverstate" and not m.group(4):
            states[name] = int(m.group(1))
        else:
            parts.append((Path(name), state))
    complete = sorted(((it, Path(p)) for p, it in states.items()), key=lambda t: (t[0], str(t[1])))
    incomplete = sorted(p for p, state in parts if state not in states)
    return Snapshots(complete, incomplete)


@dataclass
class LoadedState:
    iter: int
    current_step: int
    learned_net: Path | None
    history: list[np.ndarray]
    extra: dict[str, Any] | None
    note: str = ""   # why a sidecar present was not used


def _explain_missing(path: Path) -> str:
    """Why ``path`` (a solverstate) is missing when parts of its snapshot are there, or ''."""
    name = str(path)
    stem = name[:-3] if name.endswith(".h5") else name
    stem = stem[:-len(".solverstate")] if stem.endswith(".solverstate") else stem
    h5 = ".h5" if name.endswith(".h5") else ""
    parts = [p for p in (Path(stem + ".caffemodel" + h5), Path(name + ".json")) if p.exists()]
    if not parts:
        return ""
    m = re.search(r"^(.*)_iter_\d+$", stem)
    latest = find_snapshots(m.group(1)).latest if m else None
    hint = f"; resume from the latest complete one: --snapshot {latest}" if latest else ""
    return (f"; {parts[0].name} is there without it: an incomplete snapshot (the run stopped while "
            f"writing it){hint}")


def read_solverstate(path: str | os.PathLike) -> LoadedState:
    """A .solverstate (or .solverstate.h5), its weights file located, and the sidecar when present."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: cannot read solver state: no such file{_explain_missing(path)}")
    state = read_solverstate_any(path)
    history = [blob_to_array(b, where=f"{path}: history blob {i}") for i, b in enumerate(state.history)]
    learned = None
    if state.learned_net:
        candidates = [Path(state.learned_net), path.parent / Path(state.learned_net).name]
        learned = next((c for c in candidates if c.is_file()), None)
        if learned is None:
            raise FormatError(f"{path}: its weights file {state.learned_net} is missing (also looked in "
                              f"{path.parent}); restore the .caffemodel beside the .solverstate")
    extra = None
    note = ""
    sidecar = Path(str(path) + ".json")
    if sidecar.is_file():
        try:
            extra = json.loads(sidecar.read_text(encoding="utf-8"))
        except ValueError as err:
            raise FormatError(f"{sidecar}: unreadable resume state ({err}); delete it to resume as Caffe "
                              "does (data read from the start)") from None
        if extra.get("format") != STATE_FORMAT:
            raise FormatError(f"{sidecar}: unknown format {extra.get('format')!r} (expected {STATE_FORMAT})")
        if "iter" in extra and int(extra["iter"]) != int(state.iter):
            note = (f"{sidecar.name} is for iteration {extra['iter']}, the solver state for {state.iter}: "
                    "not used")
            extra = None
    return LoadedState(int(state.iter), int(state.current_step), learned, history, extra, note)


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """A Generator's state as plain JSON (ints stay exact)."""
    return dict(rng.bit_generator.state)  # typed as a Mapping; json needs a dict


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state
