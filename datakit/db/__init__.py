"""One small API over the databases Caffe reads: a registry of backends, each a Reader and a Writer.

As Caffe's ``util/db.hpp`` (DB / Cursor / Transaction and one ``GetDB``),
callers never branch on a backend's name: ``convert``, ``mean``, ``inspect``
and the trainer's data layers go through :func:`open_reader`,
:func:`open_writer` and the :class:`Backend` entry, and the command line's
``--backend`` choices are :func:`backend_names`. A new backend is one module
that calls :func:`register_backend` (see tests/sqlite_backend.py).

Built in:

* ``lmdb``: a folder with ``data.mdb`` (and ``lock.mdb``), Caffe's default;
* ``leveldb``: a folder with ``CURRENT``;
* ``hdf5``: a ``.h5`` file, a ``.txt`` list of ``.h5`` files, or a folder
  holding ``list.txt`` (what ``datakit convert --backend hdf5`` writes);
* ``sharded``: a folder with ``shards.json`` and ``shard-00000/``, ... (what
  ``datakit convert --scheduler/--cluster`` writes), read as one database in
  key order (datakit.db.sharded_backend); ``datakit merge`` makes it one.

LMDB and LevelDB hold serialized ``Datum`` values (``record_kind="datum"``,
keyed ``%08d_path`` as convert_imageset keys them); HDF5 holds float ``data``
/ ``label`` datasets (``record_kind="array"``), as Caffe's HDF5Data reads.
Readers yield records in database order, from the first, the order Caffe's
Data layer reads them in.

A database that ``datakit convert`` is still writing lives at ``DB.incomplete``
and is renamed to ``DB`` only when the conversion has finished, so neither we
nor Caffe can mistake a half-written database for a whole one; the progress
file inside (``datakit-convert.json``) says how far it got.

This module imports nothing heavy (the command line reads the registry to
build its parser); each backend's module is imported when it is first opened.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datakit.errors import DatabaseError, MissingDatabase

if TYPE_CHECKING:
    from datakit.db.base import Reader, Record, Writer

__all__ = [
    "Backend", "Record", "Reader", "Writer", "BACKENDS", "PROGRESS_NAME", "INCOMPLETE_SUFFIX", "backend_names",
    "detect_backend", "get_backend", "open_reader", "open_writer", "register_backend", "decode_datum",
    "read_progress", "incomplete_path",
]

PROGRESS_NAME = "datakit-convert.json"
INCOMPLETE_SUFFIX = ".incomplete"
HDF5_LIST_NAME = "list.txt"
RECORD_KINDS = ("datum", "array")


@dataclass(frozen=True)
class Backend:
    """One database format: how to recognise it on disk, read it and write it.

    * `detect(path) -> bool`: whether `path` (an existing file or folder) is
      one of ours; it may raise DatabaseError for a recognisable mistake
      (e.g. an LMDB's data.mdb given instead of its folder).
    * `reader(path, decode=, color=) -> Reader` and
      `writer(folder, shard_records=) -> Writer`: classes or factories, or
      ``"module:name"`` strings imported on first use (so that building the
      command line imports no database library).
    * `record_kind`: ``"datum"`` (serialized Datum values under
      convert_imageset's keys) or ``"array"`` (float C x H x W rows + labels).
    * `shared_reads`: several processes may read it at once (LevelDB: no).
    * `caffe_enum`: its ``DataParameter.DB`` value, if Caffe's Data layer has one.
    * `layer`: the Caffe layer type that reads it.
    * `hint`: what marks it on disk, for "not a database" messages.
    * `writable`: ``datakit convert --backend NAME`` can write it record by
      record (a sharded database is made by a cluster's convert instead).
    """

    name: str
    detect: Callable[[Path], bool]
    reader: Any
    writer: Any
    record_kind: str = "datum"
    shared_reads: bool = True
    caffe_enum: int | None = None
    layer: str = "Data"
    hint: str = ""
    writable: bool = True

    def __post_init__(self) -> None:
        if self.record_kind not in RECORD_KINDS:
            raise ValueError(f"backend {self.name!r}: record_kind must be one of {RECORD_KINDS}")

    @staticmethod
    def _load(target: Any) -> Any:
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            return getattr(importlib.import_module(module), attr)
        return target

    def open_reader(self, path: Path, *, decode: bool = False, color: bool | None = True) -> Reader:
        return self._load(self.reader)(path, decode=decode, color=color)

    def open_writer(self, folder: Path, *, shard_records: int = 1000) -> Writer:
        return self._load(self.writer)(folder, shard_records=shard_records)


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    """Add `backend` to the registry (detection tries backends in registration order).

    A second backend under a taken name is refused unless `replace`, so that
    a typo'd copy cannot silently shadow a real one.
    """
    if backend.name in BACKENDS and not replace:
        raise ValueError(f"database backend {backend.name!r} is already registered")
    BACKENDS[backend.name] = backend
    return backend


def unregister_backend(name: str) -> None:
    BACKENDS.pop(name, None)


def backend_names() -> list[str]:
    return list(BACKENDS)


def get_backend(name: str, where: str | os.PathLike = "") -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        prefix = f"{where}: " if str(where) else ""
        raise DatabaseError(f"{prefix}unknown backend {name!r} (expected one of {', '.join(BACKENDS)})") from None


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


def _hints() -> str:
    hints = [b.hint for b in BACKENDS.values() if b.hint]
    return ", ".join(hints[:-1]) + (", or " if len(hints) > 1 else "") + hints[-1] if hints else "a known backend"


def detect_backend(path: str | os.PathLike) -> str:
    """The name of the backend whose database is at `path`, from what is on disk."""
    p = Path(path)
    if p.exists():
        for backend in BACKENDS.values():
            if backend.detect(p):
                return backend.name
        raise DatabaseError(f"{p}: not a database (expected {_hints()})")
    partial = incomplete_path(p)
    if partial.exists():
        prog = read_progress(partial) or {}
        done = prog.get("written", "?")
        raise DatabaseError(f"{p}: conversion was interrupted ({done} records written, kept in {partial}); "
                            "rerun the same `datakit convert` with --resume to finish it")
    raise MissingDatabase(f"{p}: database not found")


def open_reader(path: str | os.PathLike, backend: str | None = None, *, decode: bool = False,
                color: bool | None = True, allow_incomplete: bool = False) -> Reader:
    """Open a database for reading; the backend is detected when not given.

    Refuses (DatabaseError) a database whose conversion has not finished,
    unless `allow_incomplete`.
    """
    p = Path(path)
    if backend is None:
        backend = detect_backend(p)
    else:
        get_backend(backend, p)
        if not p.exists():
            detect_backend(p)  # raises the right "not found" / "interrupted" message
    if p.is_dir() and not allow_incomplete:
        prog = read_progress(p)
        if prog is not None and prog.get("status") != "complete":
            raise DatabaseError(f"{p}: conversion has not finished ({prog.get('written', '?')} records written); "
                                "rerun `datakit convert` with --resume")
    return BACKENDS[backend].open_reader(p, decode=decode, color=color)


def open_writer(name: str, folder: str | os.PathLike, *, shard_records: int = 1000) -> Writer:
    """A Writer of backend `name` into `folder` (created, or continued when it holds earlier work)."""
    return get_backend(name, folder).open_writer(Path(folder), shard_records=shard_records)


# -- the built-in backends: recognised without importing their libraries ------------------------
def _is_lmdb(p: Path) -> bool:
    if p.is_file() and p.name == "data.mdb":
        raise DatabaseError(f"{p}: give the LMDB folder ({p.parent}), not its data.mdb file")
    return p.is_dir() and (p / "data.mdb").is_file()


def _is_leveldb(p: Path) -> bool:
    return p.is_dir() and (p / "CURRENT").is_file()


_IMAGE_LIST_LINE = re.compile(r"^\S.*\s[+-]?\d+\s*$")  # "path label": Caffe's image list, not an HDF5 list


def _refuse_image_list(listing: Path, where: Path) -> None:
    """An image list where an HDF5 list was looked for (an idx-export or assemble folder): say what it is."""
    try:
        with open(listing, "rb") as fh:
            head = fh.read(4096).decode("utf-8-sig", "replace")
    except OSError:
        return
    first = next((line.strip() for line in head.splitlines() if line.strip()), "")
    if _IMAGE_LIST_LINE.match(first) and not first.lower().endswith((".h5", ".hdf5", ".hdf")):
        what = "an image list" if where == listing else f"a folder of images with the image list {listing.name}"
        root = "ROOT" if where == listing else str(where)
        raise DatabaseError(f"{where}: {what} (PATH LABEL lines), not a database: make one with "
                            f"`datakit convert {root} {listing} DB`")


def _is_hdf5(p: Path) -> bool:
    if p.is_dir():
        if (p / HDF5_LIST_NAME).is_file() and not any(p.glob("*.h5")):
            _refuse_image_list(p / HDF5_LIST_NAME, p)
        return (p / HDF5_LIST_NAME).is_file() or any(p.glob("*.h5"))
    if p.is_file() and p.suffix.lower() == ".txt":
        _refuse_image_list(p, p)
    return p.is_file() and p.suffix.lower() in (".h5", ".hdf5", ".hdf", ".txt")


register_backend(Backend("lmdb", _is_lmdb, "datakit.db.lmdb_backend:LmdbReader",
                         "datakit.db.lmdb_backend:open_writer", caffe_enum=1, hint="data.mdb for LMDB"))
register_backend(Backend("leveldb", _is_leveldb, "datakit.db.leveldb_backend:LevelDBReader",
                         "datakit.db.leveldb_backend:open_writer", shared_reads=False, caffe_enum=0,
                         hint="CURRENT for LevelDB"))
register_backend(Backend("hdf5", _is_hdf5, "datakit.db.hdf5_backend:HDF5Reader",
                         "datakit.db.hdf5_backend:open_writer", record_kind="array", layer="HDF5Data",
                         hint=f"{HDF5_LIST_NAME} / .h5 files (or a .h5 / .txt file) for HDF5"))


def _is_sharded(p: Path) -> bool:
    return p.is_dir() and (p / "shards.json").is_file()


register_backend(Backend("sharded", _is_sharded, "datakit.db.sharded_backend:ShardedReader",
                         "datakit.db.sharded_backend:no_writer", writable=False,
                         hint="shards.json for a sharded database"))


_LAZY = {"Record": "datakit.db.base", "Reader": "datakit.db.base", "Writer": "datakit.db.base",
         "KeyValueWriter": "datakit.db.base", "decode_datum": "datakit.formats.datum"}


def __getattr__(name: str) -> Any:
    """Record, Reader, Writer and decode_datum load numpy: imported when first asked for."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'datakit.db' has no attribute {name!r}")
