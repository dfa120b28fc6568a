"""One-screen summaries of Caffe files, and the upgrade of old nets to current text.

`datakit describe FILE` answers the first questions a user has about a file
someone handed them: what is it, which layers, which shapes, which mean.
The kind of file is recognised from its suffix and, failing that, its content.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from datakit.errors import FormatError, MissingFormatFile
from datakit.formats import caffe_pb2
from datakit.formats.blobproto import read_binaryproto, read_mean
from datakit.formats.caffemodel import model_layers, read_caffemodel, write_caffemodel
from datakit.formats.hdf5_snapshot import is_hdf5, read_solverstate_any
from datakit.formats.prototxt import parse_net, read_net, read_solver, to_text, write_prototxt


def file_kind(path: str | os.PathLike) -> str:
    """'net', 'solver', 'caffemodel', 'binaryproto', 'npy' or 'solverstate', from the name or content."""
    name = str(path).lower()
    for suffix, kind in ((".caffemodel", "caffemodel"), (".caffemodel.h5", "caffemodel"),
                         (".binaryproto", "binaryproto"), (".npy", "npy"), (".solverstate", "solverstate"),
                         (".solverstate.h5", "solverstate")):
        if name.endswith(suffix):
            return kind
    if name.endswith((".prototxt", ".pt", ".txt")):
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MissingFormatFile(f"{path}: file not found") from None
        except UnicodeDecodeError:
            raise FormatError(f"{path}: not a text file, but named like a prototxt") from None
        solver_words = ("base_lr", "lr_policy", "max_iter", "train_net", "test_iter")
        return "solver" if any(w in text for w in solver_words) and "layer" not in text else "net"
    if name.endswith(".h5") and is_hdf5(path):
        import h5py
        with h5py.File(path, "r") as f:
            if "data" in f:
                return "caffemodel"
            if "iter" in f and "history" in f:
                return "solverstate"
    raise FormatError(f"{path}: unknown kind of file (expected .prototxt, .caffemodel(.h5), .binaryproto, "
                      ".npy or .solverstate(.h5))")


def _net_lines(net: caffe_pb2.NetParameter, blobs: dict[str, list[np.ndarray]] | None = None) -> list[str]:
    lines = [f"net {net.name or '(unnamed)'}: {len(net.layer)} layers"]
    for layer in net.layer:
        phases = ",".join(caffe_pb2.Phase.Name(r.phase) for r in layer.include if r.HasField("phase"))
        desc = f"  {layer.name:<20} {layer.type:<18} {','.join(layer.bottom) or '-'} -> {','.join(layer.top) or '-'}"
        if phases:
            desc += f"  [{phases}]"
        if blobs and layer.name in blobs:
            desc += "  " + " ".join("x".join(map(str, b.shape)) for b in blobs[layer.name])
        lines.append(desc)
    return lines


def describe(path: str | os.PathLike) -> list[str]:
    """Lines describing the file; raises FormatError for unreadable or malformed files."""
    kind = file_kind(path)
    if kind == "net":
        return _net_lines(read_net(path))
    if kind == "solver":
        solver = read_solver(path)
        return [f"solver {path}"] + [f"  {line}" for line in to_text(solver).splitlines()]
    if kind == "caffemodel":
        net = read_caffemodel(path)
        layers = model_layers(net, source=str(path))
        total = sum(int(b.size) for m in layers for b in m.blobs)
        lines = _net_lines(net, {m.name: m.blobs for m in layers}) + [f"{total:,} parameters"]
        if is_hdf5(path):
            lines[0] += " (Caffe HDF5 weights: layer names and blobs, no types or order)"
        return lines
    if kind in ("binaryproto", "npy"):
        arr = read_binaryproto(path) if kind == "binaryproto" else read_mean(path)
        lines = [f"blob {path}: shape {tuple(arr.shape)}, {arr.dtype}, min {arr.min():.4f} "
                 f"mean {arr.mean():.4f} max {arr.max():.4f}"]
        if arr.ndim in (3, 4) and (arr.ndim == 3 or arr.shape[0] == 1):
            chw = read_mean(path)
            per = ", ".join(f"{v:.4f}" for v in chw.reshape(chw.shape[0], -1).mean(axis=1))
            lines.append(f"  per-channel means (stored order, BGR for Caffe means): {per}")
        return lines
    state = read_solverstate_any(path)
    return [f"solverstate {path}: iter {state.iter}, learned_net {state.learned_net!r}, "
            f"{len(state.history)} history blobs, current_step {state.current_step}"
            + (" (HDF5)" if is_hdf5(path) else "")]


_BINARY_SUFFIXES = (".caffemodel", ".binaryproto", ".solverstate", ".h5")


def _check_output_name(kind: str, dst: Path) -> None:
    """Refuse a name that says the other form: a text net written as ``x.caffemodel`` (or weights as
    ``x.prototxt``) is read back by every tool, Caffe's too, as what its name says, and fails there."""
    suffix = dst.suffix.lower()
    if kind == "caffemodel" and suffix in (".prototxt", ".txt", ".pbtxt"):
        raise FormatError(f"{dst}: the upgraded weights are a binary .caffemodel; name the output *.caffemodel")
    if kind in ("net", "solver") and suffix in _BINARY_SUFFIXES:
        raise FormatError(f"{dst}: the upgraded {kind} is a text prototxt; name the output *.prototxt")


def upgrade_file(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Caffe's upgrade_net_proto_text / _binary: write `src` in the current form to `dst`."""
    kind = file_kind(src)
    _check_output_name(kind, Path(dst))
    if kind == "net":
        write_prototxt(dst, read_net(src))
    elif kind == "caffemodel":
        write_caffemodel(dst, read_caffemodel(src))
    elif kind == "solver":
        write_prototxt(dst, read_solver(src))
    else:
        raise FormatError(f"{src}: only nets, solvers and caffemodels have old forms to upgrade")
    return kind


__all__ = ["describe", "file_kind", "upgrade_file", "parse_net"]
