"""Weights in and out of a Net: .caffemodel files (current and V0/V1 formats).

Loading copies by layer name with shape checks (the error names the layer,
the blob and both shapes), leaves layers the model lacks to their fillers and
reports them, so a user fine-tuning a net sees exactly what was transferred.
Saving writes a NetParameter with blobs that Caffe's CopyTrainedLayersFrom reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from datakit.formats.caffemodel import read_caffemodel, write_caffemodel

from trainer.net import CopyReport, Net


def load_weights(net: Net, path: str | os.PathLike) -> CopyReport:
    """Copy a .caffemodel's blobs into ``net`` by layer name; what was copied/initialised/ignored."""
    model = read_caffemodel(path)
    return net.copy_from(model, source=str(path))


def iter_load_weights(net: Net, paths: str) -> Iterator[tuple[str, CopyReport]]:
    """Caffe's ``--weights a.caffemodel,b.caffemodel``: each file in turn (later ones win),
    yielding (path, report) as each is copied, so a caller can log one before reading the next."""
    for p in paths.split(","):
        if p:
            yield p, load_weights(net, p)


def load_weights_list(net: Net, paths: str) -> list[CopyReport]:
    """``iter_load_weights`` run to the end: one report per file."""
    return [report for _, report in iter_load_weights(net, paths)]


def save_weights(net: Net, path: str | os.PathLike, *, write_diff: bool = False) -> None:
    """Write the net's weights as a .caffemodel (atomically: a crash leaves the old file)."""
    write_caffemodel(path, net.to_proto(write_diff=write_diff))
