"""A Net built from a Caffe NetParameter: layers, named blobs, params, forward/backward.

Follows Caffe's Net. The package has one module per stage of a net's life:

* ``trainer.net.rules``: which layers a phase gets (include/exclude rules, Split insertion);
* ``trainer.net.graph``: ``NetGraph``, those layers built and wired by blob name, params
  shared, the backward pass pruned as Caffe prunes it;
* this module: ``Net``, a NetGraph that runs (forward, backward, per layer or whole) and
  closes its layers' files and threads;
* ``trainer.net.weight_copy``: weights in by layer name from a NetParameter, shared with
  another net, and out as a NetParameter Caffe can load.

Every name callers use is importable from ``trainer.net`` (``Net``, ``TRAIN``, ``TEST``,
``Param``, ``CopyReport``, ``UnknownNameError``, ``filter_net``, ...).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from datakit.formats import caffe_pb2

from trainer.backend import to_host
from trainer.net.graph import NetGraph, Param, ParamSpecInfo, UnknownNameError
from trainer.net.rules import TEST, TRAIN, filter_net, insert_splits, phase_name, state_meets_rule
from trainer.net.weight_copy import CopyReport, copy_weights, net_to_proto, param_arrays, share_trained_layers

__all__ = ["TRAIN", "TEST", "Net", "NetGraph", "Param", "ParamSpecInfo", "CopyReport", "UnknownNameError",
           "filter_net", "insert_splits", "state_meets_rule", "phase_name"]


class Net(NetGraph):
    """A Caffe network for one phase, on ``xp`` (numpy or cupy): built as NetGraph builds it, run here."""

    def close(self) -> None:
        """Close every layer's files and threads (data layers); the net is unusable afterwards."""
        for layer in self.layers:
            layer.close()

    def __enter__(self) -> Net:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @classmethod
    def from_file(cls, path: str | os.PathLike, phase: int = TEST, **kwargs: Any) -> Net:
        """Read a net prototxt (any Caffe generation, upgraded on read) and build it."""
        from datakit.formats.prototxt import read_net  # noqa: PLC0415
        kwargs.setdefault("source", path)
        return cls(read_net(path), phase, **kwargs)

    # -- running --------------------------------------------------------------
    def forward_layer(self, i: int) -> float:
        """Reshape and run layer ``i``; its weighted loss (0.0 when it has none)."""
        layer, bottoms, tops = self.layers[i], self.bottom_vecs[i], self.top_vecs[i]
        layer.reshape(bottoms, tops)
        layer.forward(bottoms, tops)
        loss = 0.0
        for t, w in zip(tops, self.loss_weights[i]):
            if w:
                loss += w * float(t.data.sum())
        return loss

    def backward_layer(self, i: int) -> None:
        """Run layer ``i``'s backward (seeding its loss tops with their weights)."""
        if not self.layer_need_backward[i]:
            return
        tops = self.top_vecs[i]
        for t, w in zip(tops, self.loss_weights[i]):
            if w:
                t.diff = self.xp.full(t.shape, w, dtype=self.dtype)
        self.layers[i].backward(tops, self.bottom_need_backward[i], self.bottom_vecs[i])

    def forward(self) -> float:
        """Run every layer (data layers fetch their next batch); the weighted loss."""
        return sum(self.forward_layer(i) for i in range(len(self.layers)))

    def backward(self) -> None:
        """Gradients of the loss: bottom diffs written, param diffs accumulated."""
        for i in range(len(self.layers) - 1, -1, -1):
            self.backward_layer(i)

    def forward_backward(self) -> float:
        loss = self.forward()
        self.backward()
        return loss

    def clear_param_diffs(self) -> None:
        for p in self.learnable_params:
            p.blob.zero_diff()

    def outputs(self) -> dict[str, np.ndarray]:
        """Host copies of the output blobs (produced and never consumed), e.g. loss, accuracy."""
        return {name: np.array(to_host(self.blobs[name].data)) for name in self.output_names}

    # -- weights (trainer.net.weight_copy) ------------------------------------
    def share_trained_layers_with(self, other: Net) -> None:
        """Use ``other``'s param blobs for layers of the same name (TEST net ← TRAIN net)."""
        share_trained_layers(self, other)

    def copy_from(self, net_param: caffe_pb2.NetParameter, *, source: str = "caffemodel") -> CopyReport:
        """Copy weights by layer name from a (current-form) NetParameter with blobs."""
        return copy_weights(self, net_param, source=source)

    def to_proto(self, write_diff: bool = False) -> caffe_pb2.NetParameter:
        """A NetParameter with every layer and its blobs (a .caffemodel Caffe can load)."""
        return net_to_proto(self, write_diff)

    def param_arrays(self) -> dict[str, list[np.ndarray]]:
        """{layer name: host copies of its blobs} for layers with params."""
        return param_arrays(self)

    def __repr__(self) -> str:
        return f"Net({self.name!r}, {phase_name(self.phase)}, {len(self.layers)} layers)"
