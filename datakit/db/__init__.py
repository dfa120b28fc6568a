"""One small API over Caffe's three database backends: LMDB, LevelDB and HDF5.

Readers (used by ``datakit mean``, ``datakit inspect`` and the trainer's data
layers) yield :class:`Record` in database order, from the first record, the
order Caffe's Data layer reads them in. LMDB and LevelDB hold serialized
``Datum`` values (see :mod:`datakit.datum`); HDF5 holds float ``data`` /
``label`` datasets listed in a text file, as Caffe's HDF5Data layer reads them.

Layout on disk:

* LMDB: a folder with ``data.mdb`` (and ``lock.mdb``);
* LevelDB: a folder with ``CURRENT``;
* HDF5: a ``.h5`` file, a ``.txt`` list of ``.h5`` files, or a folder holding
  ``list.txt`` (what ``datakit convert --backend hdf5`` writes).

A database that ``datakit convert`` is still writing lives at ``DB.incomplete``
and is renamed to ``DB`` only when the conversion has finished, so neither we
nor Caffe can mistake a half-written database for a whole one; the progress
file inside (``datakit-convert.json``) says how far it got.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

import numpy as np

from datakit.datum import DatumFields, datum_to_array, decode_datum, parse_datum_fields
from datakit.errors import DatabaseError

__all__ = [
    "Record", "Reader", "BACKENDS", "PROGRESS_NAME", "INCOMPLETE_SUFFIX", "detect_backend",
    "open_reader", "decode_datum", "read_progress", "incomplete_path",
]

BACKENDS = ("lmdb", "leveldb", "hdf5")
PROGRESS_NAME = "datakit-convert.json"
INCOMPLETE_SUFFIX = ".incomplete"
HDF5_LIST_NAME = "list.txt"


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


def incomplete_path(path: str | os.PathLike) -> Path:
    """Where a conversion into `path` keeps its work until it has finished."""
    p = Path(path)
    return p.with_name(p.name + INCOMPLETE_SUFFIX)


def read_progress(folder: str | os.PathLike) -> dict | None:
    """The convert progress file inside a database folder, or None (e.g. a database Caffe made)."""
    f = Path(folder) / PROGRESS_NAME
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise DatabaseError(f"{f}: unreadable progress file ({err}); delete it to read the database anyway") from None


def detect_backend(path: str | os.PathLike) -> str:
    """'lmdb', 'leveldb' or 'hdf5', from what is on disk at `path`.

    An LMDB is a folder with data.mdb, a LevelDB a folder with CURRENT, HDF5 a
    .h5 file, a .txt list of .h5 files or a folder with list.txt / .h5 files.
    """
    p = Path(path)
    if p.is_dir():
        if (p / "data.mdb").is_file():
            return "lmdb"
        if (p / "CURRENT").is_file():
            return "leveldb"
        if (p / HDF5_LIST_NAME).is_file() or any(p.glob("*.h5")):
            return "hdf5"
        raise DatabaseError(f"{p}: not a database (expected data.mdb for LMDB, CURRENT for LevelDB, "
                            f"or {HDF5_LIST_NAME} / .h5 files for HDF5)")
    if p.is_file():
        if p.suffix.lower() in (".h5", ".hdf5", ".hdf", ".txt"):
            return "hdf5"
        if p.name == "data.mdb":
            raise DatabaseError(f"{p}: give the LMDB folder ({p.parent}), not its data.mdb file")
        raise DatabaseError(f"{p}: not a database (an LMDB or LevelDB is a folder; HDF5 is .h5 or a .txt list)")
    partial = incomplete_path(p)
    if partial.exists():
        prog = read_progress(partial) or {}
        done = prog.get("written", "?")
        raise DatabaseError(f"{p}: conversion was interrupted ({done} records written, kept in {partial}); "
                            "rerun the same `datakit convert` with --resume to finish it")
    raise DatabaseError(f"{p}: database not found")


class Reader:
    """Iterate one database. Subclasses: LmdbReader, LevelDBReader, HDF5Reader.

    `decode=True` decodes encoded Datums to pixels (`color` as in
    :func:`decode_datum`); by default they come back as bytes in `encoded`.
    """

    backend: str = ""

    def __init__(self, path: str | os.PathLike, *, decode: bool = False, color: bool | None = True) -> None:
        self.path = Path(path)
        self.decode = decode
        self.color = color

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Record]:
        for key, value in self.raw_items():
            yield self._record(key, value)

    def raw_items(self, start: bytes | None = None, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, serialized Datum) pairs in key order, `start` <= key < `stop`.

        For workers that decode in parallel. HDF5 has no Datums and raises.
        """
        raise DatabaseError(f"{self.path}: {self.backend} databases hold arrays, not serialized Datums; "
                            "iterate the reader for records")

    def keys(self) -> Iterator[bytes]:
        """Every key in order (cheap: values are not copied)."""
        for key, _ in self.raw_items():
            yield key

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


def open_reader(path: str | os.PathLike, backend: str | None = None, *, decode: bool = False,
                color: bool | None = True, allow_incomplete: bool = False) -> Reader:
    """Open a database for reading; the backend is detected when not given.

    Refuses (DatabaseError) a database whose conversion has not finished,
    unless `allow_incomplete`.
    """
    p = Path(path)
    if backend is None:
        backend = detect_backend(p)
    elif backend not in BACKENDS:
        raise DatabaseError(f"{p}: unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    elif not p.exists():
        detect_backend(p)  # raises the right "not found" / "interrupted" message
    if p.is_dir() and not allow_incomplete:
        prog = read_progress(p)
        if prog is not None and prog.get("status") != "complete":
            raise DatabaseError(f"{p}: conversion has not finished ({prog.get('written', '?')} records written); "
                                "rerun `datakit convert` with --resume")
    if backend == "lmdb":
        from datakit.db.lmdb_backend import LmdbReader
        return LmdbReader(p, decode=decode, color=color)
    if backend == "leveldb":
        from datakit.db.leveldb_backend import LevelDBReader
        return LevelDBReader(p, decode=decode, color=color)
    from datakit.db.hdf5_backend import HDF5Reader
    return HDF5Reader(p, decode=decode, color=color)
