"""Weights between a built net and the outside: a NetParameter with blobs, or another net.

All by layer name, as Caffe's CopyTrainedLayersFrom / ShareTrainedLayersWith:

* ``copy_weights`` copies a .caffemodel's blobs into the layers of the same name,
  checking the blob count and each shape (a legacy 4-D num/channels/height/width
  shape of the same count is accepted), and says in a CopyReport which layers were
  copied, which kept their fillers' values and which the model had but the net
  does not. A mismatch is a FormatError naming the layer, the blob and both shapes.
* ``share_trained_layers`` makes a TEST net use a TRAIN net's param blobs (one copy
  in memory, so testing always sees the current weights).
* ``net_to_proto`` writes every layer (less the Splits the net inserted itself) with
  its blobs: a NetParameter Caffe can load; ``param_arrays`` gives host copies.

``trainer.net.Net`` exposes these as methods (``copy_from``, ``share_trained_layers_with``,
``to_proto``, ``param_arrays``); ``trainer.weights`` reads and writes the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from datakit.errors import FormatError
from datakit.formats import caffe_pb2
from datakit.formats.blobproto import array_to_blob, blob_shape, blob_to_array

from trainer.backend import to_host
from trainer.net.graph import NetGraph
from trainer.net.rules import phase_name


@dataclass
class CopyReport:
    """What ``Net.copy_from`` did, by layer name."""

    copied: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"copied {len(self.copied)} layer(s)"]
        if self.initialised:
            parts.append(f"initialised by fillers: {', '.join(self.initialised)}")
        if self.ignored:
            parts.append(f"not in the net (ignored): {', '.join(self.ignored)}")
        return "; ".join(parts)


def share_trained_layers(net: NetGraph, other: NetGraph) -> None:
    """Use ``other``'s param blobs for layers of the same name (TEST net ← TRAIN net)."""
    for layer in net.layers:
        if not layer.blobs or layer.name not in other.layer_names:
            continue
        src = other.layer(layer.name)
        if len(src.blobs) != len(layer.blobs):
            raise FormatError(f"layer {layer.name}: {len(src.blobs)} blobs in net {other.name!r}, "
                              f"{len(layer.blobs)} here")
        for k, (mine, theirs) in enumerate(zip(layer.blobs, src.blobs)):
            if mine.shape != theirs.shape:
                raise FormatError(f"layer {layer.name}: blob {k} has shape {theirs.shape} in the "
                                  f"{phase_name(other.phase)} net, {mine.shape} in the "
                                  f"{phase_name(net.phase)} net")
            layer.blobs[k] = theirs
    for p in net.learnable_params:
        p.blob = net.layer(p.layer_name).blobs[p.index]


def copy_weights(net: NetGraph, net_param: caffe_pb2.NetParameter, *, source: str = "caffemodel") -> CopyReport:
    """Copy weights by layer name from a (current-form) NetParameter with blobs."""
    report = CopyReport()
    seen: set[str] = set()
    for src in net_param.layer:
        if not len(src.blobs):
            continue
        if src.name not in net.layer_names:
            report.ignored.append(src.name)
            continue
        layer = net.layer(src.name)
        if len(src.blobs) != len(layer.blobs):
            raise FormatError(f"layer {src.name}: {source} has {len(src.blobs)} blob(s), the net "
                              f"expects {len(layer.blobs)} (check bias_term and the layer type)")
        arrays = []
        for k, (bp, blob) in enumerate(zip(src.blobs, layer.blobs)):
            arr = blob_to_array(bp, where=f"{source}: layer {src.name} blob {k}")
            arrays.append(_fit_shape(arr, bp, blob.shape, src.name, k, source))
        for blob, arr in zip(layer.blobs, arrays):
            blob.data[...] = net.xp.asarray(arr.astype(net.dtype, copy=False))
        report.copied.append(src.name)
        seen.add(src.name)
    report.initialised = [layer.name for layer in net.layers if layer.blobs and layer.name not in seen]
    return report


def _fit_shape(arr: np.ndarray, bp: caffe_pb2.BlobProto, want: tuple[int, ...], layer: str,
               k: int, source: str) -> np.ndarray:
    """Accept the exact shape, or a legacy 4-D (num, channels, height, width) with the same count."""
    if arr.shape == want:
        return arr
    if not bp.HasField("shape") and len(want) <= 4:
        legacy = (1,) * (4 - len(want)) + tuple(want)
        if tuple(blob_shape(bp)) == legacy:
            return arr.reshape(want)
    got = ",".join(str(d) for d in arr.shape)
    exp = ",".join(str(d) for d in want)
    raise FormatError(f"layer {layer}: {source} blob {k} has shape ({got}), net expects ({exp})")


def net_to_proto(net: NetGraph, write_diff: bool = False) -> caffe_pb2.NetParameter:
    """A NetParameter with every layer and its blobs (a .caffemodel Caffe can load)."""
    out = caffe_pb2.NetParameter(name=net.name)
    for layer, inserted in zip(net.layers, net.inserted_split):
        if inserted:
            continue
        lp = out.layer.add()
        lp.CopyFrom(layer.param)
        lp.name = layer.name
        del lp.blobs[:]
        for blob in layer.blobs:
            diff = to_host(blob.diff) if write_diff else None
            lp.blobs.append(array_to_blob(to_host(blob.data), diff=diff))
    return out


def param_arrays(net: NetGraph) -> dict[str, list[np.ndarray]]:
    """{layer name: host copies of its blobs} for layers with params."""
    return {layer.name: [np.array(to_host(b.data)) for b in layer.blobs]
            for layer in net.layers if layer.blobs}
