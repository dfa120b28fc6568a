"""Helpers for layers with learnable blobs: filling weights and reading ParamSpecs."""

from __future__ import annotations


from datakit.formats import caffe_pb2

from trainer.fillers import fill

from .base import Blob, Layer


def make_param_blob(layer: Layer, index: int, shape: tuple[int, ...],
                    filler: caffe_pb2.FillerParameter) -> Blob:
    """A learnable blob of ``shape`` filled by ``filler`` (host RNG, then the device)."""
    values = fill(shape, filler, layer.rng, where=f"layer {layer.name} blob {index}")
    return layer.param_blob_from_host(values, index)


def constant_filler(value: float = 0.0) -> caffe_pb2.FillerParameter:
    f = caffe_pb2.FillerParameter()
    f.type = "constant"
    f.value = value
    return f


def filler_or_default(has: bool, filler: caffe_pb2.FillerParameter) -> caffe_pb2.FillerParameter:
    """Caffe's default filler is constant 0 (FillerParameter's defaults)."""
    return filler if has else constant_filler(0.0)


__all__ = ["make_param_blob", "constant_filler", "filler_or_default"]
