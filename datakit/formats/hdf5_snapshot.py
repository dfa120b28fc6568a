"""Caffe's HDF5 snapshots: ``*.caffemodel.h5`` and ``*.solverstate.h5`` (``snapshot_format: HDF5``).

The layout is the one Caffe writes (``Net::ToHDF5`` in net.cpp and
``SGDSolver::SnapshotSolverStateToHDF5`` in sgd_solver.cpp, through the helpers
of util/hdf5.cpp):

- weights: a group ``data`` with one group per layer (every layer, blobs or not),
  holding one dataset per blob named by its index (``"0"``, ``"1"``, ...), float32 in
  the blob's shape; with ``snapshot_diff`` a group ``diff`` laid out the same way;
- solver state: ``iter`` and ``current_step`` as int32 datasets of shape (1,)
  (H5LTmake_dataset_int), ``learned_net`` as a scalar null-terminated fixed-length
  string (H5LTmake_dataset_string), and a group ``history`` with one float32 dataset
  per learnable parameter named by its index.

An HDF5 weights file keeps no layer types nor layer order (Caffe reads the groups by
name); :func:`read_caffemodel_h5` returns a NetParameter whose layers carry a name
and blobs only, which is all that copying weights by layer name needs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from datakit.errors import FormatError, MissingFormatFile
from datakit.formats import caffe_pb2
from datakit.formats.blobproto import array_to_blob, blob_to_array

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: str | os.PathLike) -> bool:
    """True when the file starts with HDF5's signature (Caffe decides by the ``.h5`` suffix; we check both)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def _open(path: str | os.PathLike, what: str):
    import h5py
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise MissingFormatFile(f"{path}: file not found") from None
    except OSError as err:
        raise FormatError(f"{path}: not a readable HDF5 {what} ({err})") from None


def _is_group(node) -> bool:
    import h5py
    return isinstance(node, h5py.Group)


def _datasets(f) -> str:
    """'data (2, 3, 28, 28) uint8, label (2,) float32': the top-level datasets of a file, for messages."""
    items = [(name, node) for name, node in f.items() if not _is_group(node)]
    return ", ".join(f"{name} {tuple(node.shape)} {node.dtype}" for name, node in items[:6]) + (
        ", ..." if len(items) > 6 else "")


def _index_names(group, where: str) -> list[str]:
    names = list(group.keys())
    bad = [n for n in names if not n.isdigit()]
    if bad:
        raise FormatError(f"{where}: dataset {bad[0]!r} is not a blob index (Caffe names them 0, 1, ...)")
    names.sort(key=int)
    if [int(n) for n in names] != list(range(len(names))):
        raise FormatError(f"{where}: blob indices {names} have a gap")
    return names


def read_caffemodel_h5(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """A ``.caffemodel.h5`` as a NetParameter: one layer (name, blobs) per group of ``data``."""
    with _open(path, "weights file (.caffemodel.h5)") as f:
        if "data" not in f:
            raise FormatError(f"{path}: HDF5 file without a 'data' group; is it a Caffe .caffemodel.h5? "
                              "(a .solverstate.h5 holds 'iter' and 'history')")
        if not _is_group(f["data"]):
            raise FormatError(f"{path}: not a Caffe .caffemodel.h5 (whose 'data' is a group of layers): it holds "
                              f"the datasets {_datasets(f)}, as an HDF5 data file for an HDF5Data layer does")
        net = caffe_pb2.NetParameter()
        diff = f.get("diff")
        for name, group in f["data"].items():
            layer = net.layer.add(name=name)
            where = f"{path}: data/{name}"
            for idx in _index_names(group, where):
                arr = np.asarray(group[idx][()])
                d = None
                if diff is not None and name in diff and idx in diff[name]:
                    d = np.asarray(diff[name][idx][()])
                layer.blobs.append(_blob(arr, d))
        return net


def _blob(arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    if arr.dtype == np.float64:
        blob = caffe_pb2.BlobProto()
        blob.shape.dim.extend(int(d) for d in arr.shape)
        blob.double_data.extend(arr.reshape(-1).tolist())
        if diff is not None:
            blob.double_diff.extend(np.asarray(diff, np.float64).reshape(-1).tolist())
        return blob
    return array_to_blob(arr.astype(np.float32, copy=False),
                         diff=None if diff is None else np.asarray(diff, np.float32))


def write_caffemodel_h5(path: str | os.PathLike, net: caffe_pb2.NetParameter, *, write_diff: bool = False) -> None:
    """Write the blobs of every layer of ``net`` in Caffe's ToHDF5 layout (to ``path`` itself: callers
    that need atomicity pass a temporary name and rename it)."""
    import h5py
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        diff = f.create_group("diff") if write_diff else None
        for layer in net.layer:
            g = data.create_group(layer.name)
            gd = diff.create_group(layer.name) if diff is not None else None
            for k, bp in enumerate(layer.blobs):
                arr = blob_to_array(bp, where=f"layer {layer.name} blob {k}")
                g.create_dataset(str(k), data=arr.astype(np.float32, copy=False))
                if gd is not None:  # Caffe writes every diff; a blob that carries none has zeros
                    d = (blob_to_array(bp, diff=True, where=f"layer {layer.name} blob {k} diff")
                         if len(bp.diff) or len(bp.double_diff) else np.zeros(arr.shape))
                    gd.create_dataset(str(k), data=d.astype(np.float32, copy=False))


def _int_dataset(f, name: str, value: int) -> None:
    f.create_dataset(name, data=np.array([value], dtype=np.int32))


def _string_dataset(f, name: str, value: str) -> None:
    """A scalar fixed-length C string with its terminating NUL, as H5LTmake_dataset_string writes it."""
    import h5py
    raw = value.encode("utf-8") + b"\0"
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw))
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    dset = h5py.h5d.create(f.id, name.encode(), tid, space)
    dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw, dtype=f"S{len(raw)}"), mtype=tid)


def write_solverstate_h5(path: str | os.PathLike, state: caffe_pb2.SolverState) -> None:
    """Write a SolverState in Caffe's SnapshotSolverStateToHDF5 layout (to ``path`` itself)."""
    import h5py
    with h5py.File(path, "w") as f:
        _int_dataset(f, "iter", int(state.iter))
        _string_dataset(f, "learned_net", state.learned_net)
        _int_dataset(f, "current_step", int(state.current_step))
        hist = f.create_group("history")
        for i, bp in enumerate(state.history):
            hist.create_dataset(str(i), data=blob_to_array(bp, where=f"history blob {i}").astype(np.float32))


def _scalar_int(f, name: str, path) -> int:
    if name not in f:
        raise FormatError(f"{path}: HDF5 solver state without '{name}'")
    return int(np.asarray(f[name][()]).reshape(-1)[0])


def read_solverstate_h5(path: str | os.PathLike) -> caffe_pb2.SolverState:
    """A ``.solverstate.h5`` as a SolverState message (history as BlobProtos)."""
    with _open(path, "solver state (.solverstate.h5)") as f:
        if "iter" not in f or "history" not in f:
            hint = ((" (it holds 'data': a .caffemodel.h5?)" if _is_group(f["data"]) else
                     f" (it holds the datasets {_datasets(f)}: an HDF5 data file?)") if "data" in f else "")
            raise FormatError(f"{path}: not a Caffe HDF5 solver state: needs 'iter' and 'history'{hint}")
        state = caffe_pb2.SolverState(iter=_scalar_int(f, "iter", path))
        if "learned_net" in f:
            raw = f["learned_net"][()]
            raw = raw.tobytes() if isinstance(raw, np.ndarray) else raw
            state.learned_net = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)).rstrip("\0")
        if "current_step" in f:
            state.current_step = _scalar_int(f, "current_step", path)
        hist = f["history"]
        for idx in _index_names(hist, f"{path}: history"):
            state.history.append(_blob(np.asarray(hist[idx][()])))
        return state


def read_solverstate_any(path: str | os.PathLike) -> caffe_pb2.SolverState:
    """A ``.solverstate`` (binary SolverState) or ``.solverstate.h5``, recognised by content."""
    path = Path(path)
    if is_hdf5(path):
        return read_solverstate_h5(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FormatError(f"{path}: cannot read solver state: {err.strerror or err}") from None
    state = caffe_pb2.SolverState()
    try:
        state.ParseFromString(data)
    except DecodeError:
        raise FormatError(f"{path}: not a Caffe SolverState (protobuf parse failed)") from None
    if not state.HasField("iter"):
        raise FormatError(f"{path}: not a Caffe SolverState (no iter field)")
    return state
