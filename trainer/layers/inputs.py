"""Input and DummyData: the data layers that read nothing.

Data layers have no bottoms; their forward fetches the next batch itself, so
the net's forward() is the same for a data net and a deploy net. The layers
that read files (Data for LMDB/LevelDB, ImageData, HDF5Data, MemoryData) build
on base_data.PrefetchingDataLayer and live in data_db.py, data_image.py,
data_hdf5.py and data_memory.py.
"""

from __future__ import annotations

import numpy as np

from datakit.formats import caffe_pb2

from trainer.fillers import fill, refill

from . import register
from .base import Blob, Layer


@register("Input")
class InputLayer(Layer):
    """Tops of fixed shapes that the caller fills (deploy nets)."""

    is_data = True

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        shapes = self.param.input_param.shape
        if len(shapes) not in (1, len(tops)):
            raise self.error(f"gives {len(shapes)} shapes for {len(tops)} tops (give 1 or one per top)")
        for i, t in enumerate(tops):
            s = shapes[0] if len(shapes) == 1 else shapes[i]
            t.reshape(tuple(int(d) for d in s.dim))

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        pass

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        pass


@register("DummyData")
class DummyDataLayer(Layer):
    """Tops filled by fillers (constant 0 by default); redrawn each forward unless constant.

    setup fills the tops with ``fill`` (the Generator draws every initial weight
    fill makes, so the layers after this one get the same weights as ever); each
    forward redraws them in place with ``refill`` (counter-based, in the tops'
    dtype and on their device: no temporary, no host copy).
    """

    is_data = True

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        p = self.param.dummy_data_param
        n = len(tops)
        legacy = len(p.num) or len(p.channels) or len(p.height) or len(p.width)
        if p.shape and legacy:
            raise self.error("give shape or num/channels/height/width, not both")
        shapes: list[tuple[int, ...]] = []
        if p.shape:
            if len(p.shape) not in (1, n):
                raise self.error(f"gives {len(p.shape)} shapes for {n} tops")
            for i in range(n):
                s = p.shape[0] if len(p.shape) == 1 else p.shape[i]
                shapes.append(tuple(int(d) for d in s.dim))
        else:
            fields = [list(p.num), list(p.channels), list(p.height), list(p.width)]
            for f in fields:
                if len(f) not in (1, n):
                    raise self.error("num/channels/height/width need 1 value or one per top")
            for i in range(n):
                shapes.append(tuple(int(f[0] if len(f) == 1 else f[i]) for f in fields))
        if len(p.data_filler) not in (0, 1, n):
            raise self.error(f"gives {len(p.data_filler)} data_filler for {n} tops")
        self.fillers: list[caffe_pb2.FillerParameter] = []
        for i in range(n):
            if not p.data_filler:
                f = caffe_pb2.FillerParameter()
            else:
                f = p.data_filler[0] if len(p.data_filler) == 1 else p.data_filler[i]
            self.fillers.append(f)
        for t, s, f in zip(tops, shapes, self.fillers):
            t.reshape(s)
            t.data = self.xp.asarray(fill(s, f, self.rng, where=f"layer {self.name}").astype(self.dtype))

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        pass

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        for t, f in zip(tops, self.fillers):
            if f.type in ("constant", "bilinear"):  # the same values every time
                continue
            data = t.data
            host = isinstance(data, np.ndarray)
            if data.dtype != self.dtype or not data.flags.c_contiguous or (host and not data.flags.writeable):
                data = self.xp.empty(t.shape, dtype=self.dtype)  # not ours to write into: a fresh buffer
                t.data = data
            refill(data, f, self.rng, where=f"layer {self.name}")
