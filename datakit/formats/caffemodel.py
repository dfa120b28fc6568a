"""Read and write .caffemodel files (a binary NetParameter whose layers carry blobs).

Models from every Caffe generation are accepted: V0 and V1 models keep their
blobs in the old `layers` field and are upgraded on read, so callers always
get current-form layers and one {layer name: [arrays]} view of the weights.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from datakit.atomic import write_bytes_atomic
from datakit.errors import FormatError, MissingFormatFile
from datakit.formats import caffe_pb2
from datakit.formats.blobproto import blob_to_array
from datakit.formats.upgrade import upgrade_net


@dataclass(frozen=True)
class ModelLayer:
    """One layer of a model file: its name, type and blobs (weights, bias, ...)."""

    name: str
    type: str
    blobs: list[np.ndarray]


_TEXT_START = re.compile(rb"^\s*(#|[A-Za-z_][A-Za-z0-9_]*\s*(:|\{))")


def looks_like_prototxt(data: bytes) -> bool:
    """True for prototxt text (a net or solver description), which users hand to --weights by mistake."""
    head = data[:4096]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut at the end of the sample
            return False
    return bool(_TEXT_START.match(head))


def parse_caffemodel(data: bytes, *, source: str = "<caffemodel>") -> caffe_pb2.NetParameter:
    if looks_like_prototxt(data):
        raise FormatError(f"{source}: is a text prototxt (a net or solver description), not a .caffemodel of "
                          "weights; give the binary .caffemodel (or .caffemodel.h5) a training run wrote")
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except DecodeError as err:
        _refuse_solverstate(data, source)
        raise FormatError(f"{source}: not a valid .caffemodel (binary NetParameter): {err}") from None
    if not len(net.layer) and not len(net.layers):
        _refuse_solverstate(data, source)
        raise FormatError(f"{source}: holds no layers; is it a .caffemodel? (a prototxt is text, "
                          "a .solverstate or .binaryproto is another message)")
    try:
        return upgrade_net(net, source=source)
    except FormatError:
        _refuse_solverstate(data, source)  # a .solverstate reads as a NetParameter of one garbage V1 layer
        raise


def _refuse_solverstate(data: bytes, source: str) -> None:
    """A .solverstate given where weights go: say what it is and what to pass instead."""
    state = caffe_pb2.SolverState()
    try:
        state.ParseFromString(data)
    except DecodeError:
        return
    if state.learned_net.endswith((".caffemodel", ".caffemodel.h5")) or source.endswith(".solverstate"):
        weights = state.learned_net or "the .caffemodel of the same iteration"
        raise FormatError(f"{source}: is a solver state (iteration {state.iter}: the update history), not "
                          f"weights; pass {weights} as --weights, or resume the run with --snapshot {source}")


def read_caffemodel(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Read a .caffemodel (or Caffe's HDF5 ``.caffemodel.h5``) as a current-form NetParameter (blobs included)."""
    from datakit.formats.hdf5_snapshot import is_hdf5, read_caffemodel_h5
    if is_hdf5(path):
        return read_caffemodel_h5(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        from datakit.model_zoo import fetch_hint  # noqa: PLC0415 - only on this error
        raise MissingFormatFile(f"{path}: file not found{fetch_hint(path)}") from None
    return parse_caffemodel(data, source=str(path))


def model_layers(net: caffe_pb2.NetParameter, *, source: str = "<caffemodel>") -> list[ModelLayer]:
    """Every layer in file order with its blobs as float32/float64 arrays."""
    return [ModelLayer(layer.name, layer.type,
                       [blob_to_array(b, where=f"{source}: layer {layer.name} blob {i}")
                        for i, b in enumerate(layer.blobs)])
            for layer in net.layer]


def caffemodel_blobs(net: caffe_pb2.NetParameter, *, source: str = "<caffemodel>") -> dict[str, list[np.ndarray]]:
    """{layer name: [arrays]} for the layers that carry blobs."""
    return {m.name: m.blobs for m in model_layers(net, source=source) if m.blobs}


def write_caffemodel(path: str | os.PathLike, net: caffe_pb2.NetParameter) -> None:
    """Write a NetParameter (with blobs) as a .caffemodel, atomically."""
    write_bytes_atomic(path, net.SerializeToString())
