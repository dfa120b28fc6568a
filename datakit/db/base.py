"""What every backend implements: Record, the Reader base class and the Writer protocol.

Readers (used by ``datakit mean``, ``datakit inspect`` and the trainer's data
layers) yield :class:`Record` in database order. Datum backends also give the
serialized values (``raw_items`` / ``scan``) so that workers decode in
parallel; array backends give slabs of rows (``slabs``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datakit.formats.datum import DatumFields, datum_to_array, parse_datum_fields
from datakit.errors import DatabaseError

__all__ = ["Record", "Reader", "Writer", "KeyValueWriter", "SLAB_BYTES"]

SLAB_BYTES = 32 << 20  # array readers read this much of their data at a time


@dataclass(frozen=True, slots=True)
class Record:
    """One database record.

    `image` is C x H x W: uint8 (BGR) for raw Datums, float32 for HDF5 and
    float_data Datums, None for an encoded Datum read without decoding (then
    `encoded` holds the JPEG/PNG bytes). Arrays may be read-only views of the
    stored bytes: copy before modifying.
    """

    key: str
    label: int
    image: np.ndarray | None
    encoded: bytes | None = None


class Reader:
    """Iterate one database. Subclasses: LmdbReader, LevelDBReader, HDF5Reader (and any registered backend's).

    `decode=True` decodes encoded Datums to pixels (`color` as in
    :func:`datakit.formats.datum.decode_datum`); by default they come back as bytes in `encoded`.

    A Datum backend implements ``__len__`` and ``raw_items``; ``scan``,
    ``keys`` and ``seek`` have defaults built on them. An array backend
    implements ``__len__`` and ``slabs``.
    """

    backend: str = ""
    record_kind: str = "datum"

    def __init__(self, path: str | os.PathLike, *, decode: bool = False, color: bool | None = True) -> None:
        self.path = Path(path)
        self.decode = decode
        self.color = color

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Record]:
        if self.record_kind == "array":
            for first, slab, labels in self.slabs():
                prefix, _, row = first.rpartition("/")
                for i in range(len(slab)):
                    yield Record(f"{prefix}/{int(row) + i:08d}", int(labels[i]), slab[i], None)
            return
        for key, value in self.raw_items():
            yield self._record(key, value)

    def raw_items(self, start: bytes | None = None, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, serialized Datum) pairs in key order, `start` <= key < `stop`.

        For workers that decode in parallel. HDF5 has no Datums and raises.
        """
        raise DatabaseError(f"{self.path}: {self.backend} databases hold arrays, not serialized Datums; "
                            "iterate the reader for records")

    def scan(self, start: bytes | None = None, stop: bytes | None = None, *,
             buffers: bool = False) -> Iterator[tuple[bytes, bytes | memoryview]]:
        """(key, value) as raw_items; with `buffers=True` a backend may give zero-copy views of the values,
        valid only until the next item (LMDB does)."""
        return self.raw_items(start, stop)

    def keys(self) -> Iterator[bytes]:
        """Every key in order (cheap: values are not copied)."""
        for key, _ in self.raw_items():
            yield key

    def seek(self, position: int) -> bytes | None:
        """The key of record number `position` (0-based), to start a scan there; None for the first.

        The default walks the keys (no backend here has an index by position).
        """
        if position <= 0:
            return None
        for i, key in enumerate(self.keys()):
            if i == position:
                return bytes(key)
        raise IndexError(f"{self.path}: no record {position} (the database has {len(self)})")

    def slabs(self, max_bytes: int = SLAB_BYTES) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Array backends: (key of the first row, float32 N x C x H x W rows, N int labels), in order."""
        raise DatabaseError(f"{self.path}: {self.backend} databases hold serialized Datums, not arrays; "
                            "use raw_items() or iterate the reader")

    def _record(self, key: bytes, value: bytes) -> Record:
        where = f"{self.path}: record {key.decode('utf-8', 'backslashreplace')!r}"
        fields: DatumFields = parse_datum_fields(value, where)
        skey = key.decode("utf-8", "surrogateescape")
        if fields.encoded and not self.decode:
            return Record(skey, fields.label, None, bytes(fields.data))
        return Record(skey, fields.label, datum_to_array(fields, color=self.color, where=where),
                      bytes(fields.data) if fields.encoded else None)

    def close(self) -> None:
        pass

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"



class Writer:
    """What `datakit convert` writes through; every backend's writer follows it.

    * ``write(items) -> bool``: add a batch (``(key, serialized Datum)`` pairs
      for ``record_kind="datum"``, ``(C x H x W uint8 array, label)`` pairs
      for ``"array"``); True when this made a durable point (everything
      written so far is on disk, e.g. an HDF5 shard was completed), at which
      the caller may save its progress together with ``progress_state()``.
    * ``syncs``: whether ``sync()`` makes every write so far durable (then the
      caller checkpoints by sync() then saving its progress); False when only
      the durable points ``write`` reports count.
    * ``batch_limit(handed, commit_every)``: the most records the next batch
      may hold, given `handed` records written since the writer opened.
    * ``one_shape``: every record must have one shape.
    * ``resume(progress)``: drop whatever was written after the saved
      `progress` (a dict with ``next_index`` and this writer's own state).
    * ``finish(final)``: the data is complete and will be renamed to `final`.
    * ``close()``: release everything; what was made durable stays.
    """

    backend: str = ""
    record_kind: str = "datum"
    syncs: bool = True
    one_shape: bool = False

    def write(self, items: Sequence) -> bool:
        raise NotImplementedError

    def sync(self) -> None:
        """Make every write so far durable."""

    def batch_limit(self, handed: int, commit_every: int) -> int:
        return commit_every

    def progress_state(self) -> dict:
        return {}

    def resume(self, progress: dict) -> None:
        raise NotImplementedError

    def count(self) -> int | None:
        """How many records the database holds now; None where the writer cannot tell cheaply.

        After ``resume`` it must equal the progress file's ``written`` (what the interrupted run made
        durable); ``convert --resume`` refuses a database changed since (a data file deleted, another
        run writing into it)."""
        return None

    def finish(self, final: str | os.PathLike) -> None:
        """Called once the last record is written, before the data is installed at `final`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KeyValueWriter(Writer):
    """A Datum writer over an ordered key-value store: resume deletes the keys from the resume point on.

    Keys are convert_imageset's ``%08d_path``, so the record at output index i
    and everything after it are the keys >= ``%08d`` % i.
    """

    def truncate_from(self, key: bytes) -> int:
        """Delete every record whose key is >= `key`; returns how many."""
        raise NotImplementedError

    def resume(self, progress: dict) -> None:
        # Always, from 0 too: records committed after the last checkpoint are on disk but unclaimed.
        start = int(progress.get("next_index", 0))
        self.truncate_from(f"{start:08d}".encode())
