"""Caffe's wire formats: our own caffe.proto (Caffe's field numbers), its
generated module `caffe_pb2`, and helpers for .binaryproto, .caffemodel and
prototxt text.

`caffe_pb2` (and with it protobuf) is imported on first use, not with the
package: the readers of raw Datums and the mean writer parse and write their
few fields by hand, and their commands start without protobuf.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["caffe_pb2"]


def __getattr__(name: str) -> Any:
    if name == "caffe_pb2":
        return importlib.import_module("datakit.formats.caffe_pb2")
    raise AttributeError(f"module 'datakit.formats' has no attribute {name!r}")
