"""Snapshots: ``<prefix>_iter_N.caffemodel`` + ``.solverstate`` (+ our resume sidecar).

The .caffemodel and .solverstate are Caffe's own formats (NetParameter with
blobs; SolverState with iter, learned_net, history, current_step), so Caffe can
resume our runs and we can resume Caffe's. Exact resumption needs more than
Caffe saves: the random generator of the net (Dropout), how many batches each
data layer has consumed, the seed of each data layer and the window of recent
losses behind the displayed average. That goes in a small JSON file beside the
solverstate, ``<prefix>_iter_N.solverstate.json`` (JSON: no pickle). A Caffe
solverstate without it still resumes, with data read from the start as Caffe does.

Every file is written atomically; the .solverstate is written last, so its
presence means the whole snapshot is on disk.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datakit.atomic import write_bytes_atomic, write_text_atomic
from datakit.errors import FormatError
from datakit.formats import caffe_pb2
from datakit.formats.blobproto import array_to_blob, blob_to_array

STATE_FORMAT = "datakit-trainstate/1"


@dataclass
class SnapshotPaths:
    caffemodel: Path
    solverstate: Path
    sidecar: Path


def snapshot_paths(prefix: str, it: int) -> SnapshotPaths:
    """Caffe's names: prefix + "_iter_" + N + ".caffemodel" / ".solverstate"."""
    base = f"{prefix}_iter_{it}"
    return SnapshotPaths(Path(base + ".caffemodel"), Path(base + ".solverstate"),
                         Path(base + ".solverstate.json"))


def write_snapshot(prefix: str, it: int, net_param: caffe_pb2.NetParameter, history: list[np.ndarray],
                   current_step: int, extra: dict[str, Any] | None = None) -> SnapshotPaths:
    """Write the weights, the solver state and the resume sidecar for iteration ``it``."""
    paths = snapshot_paths(prefix, it)
    paths.caffemodel.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(paths.caffemodel, net_param.SerializeToString())
    if extra is not None:
        write_text_atomic(paths.sidecar, json.dumps({"format": STATE_FORMAT, **extra}, indent=1))
    state = caffe_pb2.SolverState(iter=it, learned_net=str(paths.caffemodel), current_step=current_step)
    for h in history:
        state.history.append(array_to_blob(np.asarray(h, dtype=np.float32)))
    write_bytes_atomic(paths.solverstate, state.SerializeToString())
    return paths


@dataclass
class LoadedState:
    iter: int
    current_step: int
    learned_net: Path | None
    history: list[np.ndarray]
    extra: dict[str, Any] | None


def read_solverstate(path: str | os.PathLike) -> LoadedState:
    """A .solverstate, its weights file located, and the sidecar when present."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FormatError(f"{path}: cannot read solver state: {err.strerror or err}") from None
    state = caffe_pb2.SolverState()
    try:
        state.ParseFromString(data)
    except Exception:
        raise FormatError(f"{path}: not a Caffe SolverState (protobuf parse failed)") from None
    if not state.HasField("iter"):
        raise FormatError(f"{path}: not a Caffe SolverState (no iter field)")
    history = [blob_to_array(b, where=f"{path}: history blob {i}") for i, b in enumerate(state.history)]
    learned = None
    if state.learned_net:
        candidates = [Path(state.learned_net), path.parent / Path(state.learned_net).name]
        learned = next((c for c in candidates if c.is_file()), None)
        if learned is None:
            raise FormatError(f"{path}: its weights file {state.learned_net} is missing (also looked in "
                              f"{path.parent}); restore the .caffemodel beside the .solverstate")
    extra = None
    sidecar = Path(str(path) + ".json")
    if sidecar.is_file():
        try:
            extra = json.loads(sidecar.read_text(encoding="utf-8"))
        except ValueError as err:
            raise FormatError(f"{sidecar}: unreadable resume state ({err}); delete it to resume as Caffe "
                              "does (data read from the start)") from None
        if extra.get("format") != STATE_FORMAT:
            raise FormatError(f"{sidecar}: unknown format {extra.get('format')!r} (expected {STATE_FORMAT})")
    return LoadedState(int(state.iter), int(state.current_step), learned, history, extra)


def rng_state(rng: np.random.Generator) -> dict:
    """A Generator's state as plain JSON (ints stay exact)."""
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state
