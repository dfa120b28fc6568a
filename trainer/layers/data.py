"""Input, DummyData and a first Data layer (LMDB/LevelDB Datums, read in order, wrapping).

Data layers have no bottoms; their forward fetches the next batch itself, so
the net's forward() is the same for a data net and a deploy net. The Data
layer here reads synchronously; a prefetching one can replace it through the
registry without the net noticing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from datakit.errors import DatabaseError
from datakit.formats import caffe_pb2

from trainer.fillers import fill

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
    """Tops filled by fillers (constant 0 by default); refilled each forward unless constant."""

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
            if f.type != "constant":
                t.data = self.xp.asarray(fill(t.shape, f, self.rng, where=f"layer {self.name}")
                                         .astype(self.dtype))


@register("Data")
class DataLayer(Layer):
    """Datums from an LMDB or LevelDB in key order, wrapping at the end (Caffe's Data layer).

    Tops: data (N×C×H×W after transform_param) and, when asked, label (N).
    Raw and encoded Datums are accepted (encoded ones are decoded).
    """

    is_data = True
    min_tops = 1
    max_tops = 2

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        from datakit.db import open_reader  # noqa: PLC0415 - the data side is imported lazily

        from trainer.transform import transformer_for  # noqa: PLC0415

        p = self.param.data_param
        if not p.source:
            raise self.error("data_param.source (the database folder) is required")
        if p.batch_size < 1:
            raise self.error("data_param.batch_size must be positive")
        self.batch_size = int(p.batch_size)
        source = Path(p.source)
        if not source.is_absolute():
            source = Path(self.base_dir) / source
        backend = "lmdb" if p.backend == caffe_pb2.DataParameter.LMDB else "leveldb"
        tp = self.param.transform_param
        color: bool | None = None
        if tp.force_color:
            color = True
        elif tp.force_gray:
            color = False
        try:
            self.reader = open_reader(source, backend, decode=True, color=color)
        except DatabaseError as err:
            raise self.error(f"cannot open data_param.source: {err}") from None
        self.transformer = transformer_for(self.param, self.phase, self.base_dir)
        self._records: Iterator[Any] = iter(self.reader)
        first = self._next_record()
        self._pending = first
        c, h, w = first.image.shape
        self.in_shape = (c, h, w)
        oc, oh, ow = self.transformer.output_shape(c, h, w)
        tops[0].reshape((self.batch_size, oc, oh, ow))
        if len(tops) == 2:
            tops[1].reshape((self.batch_size,))
        if p.rand_skip:
            for _ in range(int(self.rng.integers(0, p.rand_skip))):
                self._pending = self._next_record()

    def _next_record(self) -> Any:
        try:
            return next(self._records)
        except StopIteration:
            self._records = iter(self.reader)
            try:
                return next(self._records)
            except StopIteration:
                raise self.error(f"database {self.reader.path} is empty") from None

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        pass

    def close(self) -> None:
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.close()
            self.reader = None

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        c, h, w = self.in_shape
        batch = np.empty((self.batch_size, c, h, w), dtype=np.uint8)
        labels = np.empty(self.batch_size, dtype=self.dtype)
        for i in range(self.batch_size):
            rec = self._pending if self._pending is not None else self._next_record()
            self._pending = None
            img = rec.image
            if img.shape != self.in_shape:
                raise self.error(f"record {rec.key!r} of {self.reader.path} is {img.shape} (CxHxW) "
                                 f"but the first record was {self.in_shape}; convert with --resize")
            if img.dtype != np.uint8:
                batch = batch.astype(img.dtype, copy=False)
            batch[i] = img
            labels[i] = rec.label
        plan = self.transformer.plan(self.batch_size, h, w, self.rng)
        out = self.transformer.apply(self.xp.asarray(batch), plan, self.xp)
        tops[0].data = out.astype(self.dtype, copy=False)
        if len(tops) == 2:
            tops[1].data = self.xp.asarray(labels)
