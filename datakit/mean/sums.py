"""Exact, mergeable sums of Datum records: the arithmetic of ``datakit mean``.

Caffe sums every record into a float32 BlobProto, which loses precision once the
sums pass 2^24 (about 65,000 records of value 255); ``RecordSum`` sums uint8 pixels
exactly in integers (a uint16 accumulator folded into uint64 every 257 records,
which is also the fastest way numpy has to add bytes), float_data records and HDF5
slabs in float64. A sum's ``state()`` is a picklable ``SumState`` that another sum
``merge()``s exactly, so partitions may be summed anywhere and merged in any grouping.
Records of another size than the first are a FormatError naming both keys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from datakit.errors import FormatError
from datakit.formats.datum import RawLayout, datum_to_array, parse_datum_fields

_FOLD = 257  # 255 * 257 = 65535: the most uint8 records a uint16 sum can hold
_BUFSIZE = 1 << 15  # numpy's casting buffer (elements) for uint8 -> uint16 adds: larger than its 8192 default


@contextlib.contextmanager
def casting_buffer() -> Iterator[None]:
    """numpy's ufunc buffer at _BUFSIZE while records are summed (the uint8 -> uint16 cast goes through
    it; fewer, larger chunks add faster), restored afterwards."""
    old = np.setbufsize(_BUFSIZE)
    try:
        yield
    finally:
        np.setbufsize(old)


class SumState(NamedTuple):
    """A partial sum, as a partition returns it (picklable): exact uint64 for bytes, float64 for floats."""

    shape: tuple[int, ...] | None
    first_key: str
    records: int  # (not `count`: that would hide tuple.count)
    u64: np.ndarray | None
    f64: np.ndarray | None


class RecordSum:
    """Exact running sum of same-shaped records; mergeable across processes (state() / merge())."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.shape: tuple[int, ...] | None = None
        self.first_key = ""
        self.count = 0
        self._u16: np.ndarray | None = None
        self._u16_n = 0
        self.u64: np.ndarray | None = None
        self.f64: np.ndarray | None = None
        #: the byte layout of the first raw record: later records of that layout skip the parse
        self.layout: RawLayout | None = None

    def _check(self, shape: tuple[int, ...], key: str) -> None:
        if self.shape is None:
            self.shape, self.first_key = shape, key
        elif shape != self.shape:
            raise FormatError(f"{self.where}: record {key!r} is {'x'.join(map(str, shape))} but record "
                              f"{self.first_key!r} is {'x'.join(map(str, self.shape))}; a mean needs one size "
                              "(convert with --resize-height/--resize-width)")

    def add_u8(self, flat: np.ndarray, shape: tuple[int, ...], key: str) -> None:
        self._check(shape, key)
        if self._u16 is None:
            self._u16 = np.zeros(flat.size, np.uint16)
            self.u64 = np.zeros(flat.size, np.uint64)
        np.add(self._u16, flat, out=self._u16, casting="unsafe")
        self._u16_n += 1
        self.count += 1
        if self._u16_n == _FOLD:
            self._fold()

    def _fold(self) -> None:
        if self._u16 is not None and self._u16_n:
            self.u64 += self._u16
            self._u16[:] = 0
            self._u16_n = 0

    def add_float(self, arr: np.ndarray, key: str) -> None:
        self._check(tuple(arr.shape), key)
        if self.f64 is None:
            self.f64 = np.zeros(arr.size, np.float64)
        self.f64 += arr.ravel()
        self.count += 1

    def add_float_slab(self, slab: np.ndarray, key: str) -> None:
        """Add the rows of an N x ... float array (HDF5)."""
        self._check(tuple(slab.shape[1:]), key)
        if self.f64 is None:
            self.f64 = np.zeros(int(np.prod(slab.shape[1:])), np.float64)
        self.f64 += np.add.reduce(slab.reshape(slab.shape[0], -1), axis=0, dtype=np.float64)
        self.count += slab.shape[0]

    def state(self) -> SumState:
        self._fold()
        return SumState(self.shape, self.first_key, self.count, self.u64, self.f64)

    def merge(self, state: SumState) -> None:
        """Add a partial sum (of another partition): exact, so partitions may merge in any grouping."""
        shape, key, count, u64, f64 = state
        if not count or shape is None:
            return
        self._check(shape, key)
        self.count += count
        if u64 is not None:
            self.u64 = u64 if self.u64 is None else self.u64 + u64
        if f64 is not None:
            self.f64 = f64 if self.f64 is None else self.f64 + f64

    def total(self) -> np.ndarray:
        self._fold()
        out = np.zeros(int(np.prod(self.shape)), np.float64) if self.shape else np.zeros(0)
        if self.u64 is not None:
            out += self.u64.astype(np.float64)
        if self.f64 is not None:
            out += self.f64
        return out


def add_datum(acc: RecordSum, key: bytes, value, color: bool | None) -> None:
    layout = acc.layout
    if layout is not None:  # a raw record like the first one: two byte comparisons, no parse
        raw = layout.split(value)
        if raw is not None:
            acc.add_u8(np.frombuffer(raw[0], np.uint8), layout.shape, key.decode("utf-8", "backslashreplace"))
            return
    skey = key.decode("utf-8", "backslashreplace")
    where = f"{acc.where}: record {skey!r}"
    f = parse_datum_fields(value, where)
    if acc.layout is None and not f.encoded and len(f.data):
        acc.layout = RawLayout.of(value)
    if f.encoded:
        img = datum_to_array(f, color=color, where=where)
        acc.add_u8(img.reshape(-1), img.shape, skey)
    elif len(f.data):
        shape = (f.channels, f.height, f.width)
        if f.channels * f.height * f.width != len(f.data):
            raise FormatError(f"{where}: data has {len(f.data)} bytes, expected {'x'.join(map(str, shape))}")
        acc.add_u8(np.frombuffer(f.data, np.uint8), shape, skey)
    else:
        acc.add_float(datum_to_array(f, color=color, where=where), skey)
