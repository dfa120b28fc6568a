"""The part of pycaffe a Python layer sees, so layers written for Caffe run unchanged.

A Caffe Python layer is a class deriving from ``caffe.Layer`` with ``setup``, ``reshape``,
``forward`` and ``backward`` over lists of blobs (``.data``, ``.diff``: NumPy arrays;
``.reshape(*shape)``, ``.shape``, ``.count``, ``.num`` ...), ``self.param_str``, ``self.phase``
and ``self.blobs`` (learnable blobs: ``self.blobs.add_blob(*shape)``). When a layer module is
imported and no ``caffe`` module is loaded yet, this module is registered as ``caffe``, so
``import caffe`` in the layer's file finds it (a real pycaffe, if already imported, is left
alone, and its ``caffe.Layer`` subclasses are driven the same way).

On a GPU the arrays a layer sees are host copies (NumPy, as pycaffe hands out CPU memory):
they are copied from the device before each call and back after it.
"""

from __future__ import annotations

import sys
from typing import Any
from collections.abc import Iterator, Sequence

import numpy as np

TRAIN, TEST = 0, 1


class Blob:
    """pycaffe's Blob over a trainer Blob: NumPy ``data``/``diff`` that write through."""

    def __init__(self, blob: Any) -> None:
        self._blob = blob
        self._host: dict[str, np.ndarray] = {}

    def _array(self, which: str) -> np.ndarray:
        b = self._blob
        if b.xp is np:
            return b.data if which == "data" else b.diff
        if which not in self._host:  # device: a host copy, written back by flush()
            from trainer.backend import to_host
            self._host[which] = np.array(to_host(b.data if which == "data" else b.diff))
        return self._host[which]

    @property
    def data(self) -> np.ndarray:
        return self._array("data")

    @data.setter
    def data(self, value: Any) -> None:
        self._array("data")[...] = value

    @property
    def diff(self) -> np.ndarray:
        return self._array("diff")

    @diff.setter
    def diff(self, value: Any) -> None:
        self._array("diff")[...] = value

    def reshape(self, *shape: int) -> None:
        self.flush()
        self._blob.reshape(tuple(int(s) for s in shape))

    def flush(self) -> None:
        """Copy host edits back to the device (nothing to do on NumPy)."""
        b = self._blob
        if "data" in self._host:
            b.data = b.xp.asarray(self._host["data"])
        if "diff" in self._host:
            b.diff = b.xp.asarray(self._host["diff"])
        self._host.clear()

    @property
    def shape(self) -> tuple[int, ...]:
        return self._blob.shape

    @property
    def count(self) -> int:
        return self._blob.count

    def _dim(self, k: int) -> int:
        shape = self._blob.shape
        return shape[k] if k < len(shape) else 1

    num = property(lambda self: self._dim(0))
    channels = property(lambda self: self._dim(1))
    height = property(lambda self: self._dim(2))
    width = property(lambda self: self._dim(3))


class BlobVec:
    """``self.blobs`` of a Python layer: a live view of the trainer layer's learnable blobs."""

    def __init__(self, owner: Any) -> None:
        self._owner = owner
        self._views: dict[int, Blob] = {}

    def view(self, blob: Any) -> Blob:
        key = id(blob)
        if key not in self._views or self._views[key]._blob is not blob:
            self._views[key] = Blob(blob)
        return self._views[key]

    def add_blob(self, *shape: int) -> None:
        owner = self._owner
        owner.blobs.append(owner.new_blob(tuple(int(s) for s in shape), f"{owner.name}[{len(owner.blobs)}]"))

    def __getitem__(self, k: int) -> Blob:
        return self.view(self._owner.blobs[k])

    def __len__(self) -> int:
        return len(self._owner.blobs)

    def __iter__(self) -> Iterator[Blob]:
        return (self[k] for k in range(len(self)))

    def flush(self) -> None:
        for view in self._views.values():
            view.flush()


class Layer:
    """The base class Python layers derive from (pycaffe's ``caffe.Layer``)."""

    param_str: str = ""
    phase: int = TRAIN

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        pass

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        pass

    def forward(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        pass

    def backward(self, top: Sequence[Blob], propagate_down: Sequence[bool], bottom: Sequence[Blob]) -> None:
        pass


def install() -> None:
    """Make ``import caffe`` find this module unless a caffe module is already loaded."""
    sys.modules.setdefault("caffe", sys.modules[__name__])
