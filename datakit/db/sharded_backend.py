"""A sharded database: ``DB/shards.json`` and ``DB/shard-00000/``, ... read as one database, in key order.

What ``datakit convert --scheduler/--cluster`` writes (datakit.convert.sharded):
each partition of the list becomes one shard, a database of its own of the
``backend`` named in ``shards.json`` (LMDB or LevelDB), holding the records
of output indices ``first_index .. next_index - 1`` under the keys a local
conversion gives them (``%08d_path``). The shards are listed in index order
and their key ranges do not overlap, so reading them one after the other is
reading the single database a local conversion writes, record for record.

``shards.json``::

    {"format": "datakit-shards", "version": 1, "backend": "lmdb", "count": N,
     "shards": [{"name": "shard-00000", "first_index": 0, "next_index": 1000,
                 "count": 998, "first_key": "00000000_a.jpg", "last_key": "00000999_b.jpg"}, ...]}

Caffe cannot read this layout; ``datakit merge DB OUT`` writes the single
LMDB / LevelDB it can. Each shard's reader is opened on first use and kept
open until ``close()`` (LMDB refuses a second open of one environment in a
process, so two scans of one shard must share it).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datakit.db import get_backend
from datakit.db.base import Reader
from datakit.errors import DatabaseError

__all__ = ["SHARDS_NAME", "ShardedReader", "read_shards", "shard_name"]

SHARDS_NAME = "shards.json"
FORMAT = "datakit-shards"


def shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def read_shards(path: str | os.PathLike) -> dict:
    """The checked ``shards.json`` of the sharded database at `path` (DatabaseError naming what is wrong)."""
    f = Path(path) / SHARDS_NAME
    try:
        index = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatabaseError(f"{f}: unreadable shard list ({err})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("shards"), list):
        raise DatabaseError(f"{f}: not a datakit shard list (expected format {FORMAT!r} with a 'shards' list)")
    inner = get_backend(str(index.get("backend")), f)
    if inner.record_kind != "datum" or inner.name == "sharded":
        raise DatabaseError(f"{f}: shards of backend {inner.name!r} are not supported (lmdb or leveldb)")
    last = ""
    for i, shard in enumerate(index["shards"]):
        name = shard.get("name", "")
        if not isinstance(name, str) or "/" in name or name.startswith(".") or not name:
            raise DatabaseError(f"{f}: shard {i} has a bad name {name!r}")
        if shard.get("count", 0) and shard.get("first_key", "") <= last:
            raise DatabaseError(f"{f}: shard {name} starts at key {shard.get('first_key')!r}, not after the "
                                f"previous shard's last key {last!r}")
        if shard.get("count", 0):
            last = shard.get("last_key", "")
    return index


class ShardedReader(Reader):
    """The shards of a sharded database as one Datum database (see the module docstring)."""

    backend = "sharded"
    record_kind = "datum"

    def __init__(self, path: str | os.PathLike, *, decode: bool = False, color: bool | None = True) -> None:
        super().__init__(path, decode=decode, color=color)
        self.index = read_shards(self.path)
        self.inner = get_backend(self.index["backend"])
        # several processes may scan key ranges at once only if each shard allows it (LevelDB does not)
        self.shared_reads = self.inner.shared_reads
        self.shards: list[dict[str, Any]] = [s for s in self.index["shards"] if s.get("count", 0)]
        self._open: dict[str, Reader] = {}
        self._lock = threading.Lock()
        for shard in self.shards:
            if not (self.path / shard["name"]).is_dir():
                raise DatabaseError(f"{self.path / shard['name']}: shard listed in {SHARDS_NAME} is missing")

    def __len__(self) -> int:
        return sum(int(s["count"]) for s in self.shards)

    def _reader(self, shard: dict) -> Reader:
        with self._lock:
            reader = self._open.get(shard["name"])
            if reader is None:
                reader = self._open[shard["name"]] = self.inner.open_reader(
                    self.path / shard["name"], decode=self.decode, color=self.color)
            return reader

    def _overlapping(self, start: bytes | None, stop: bytes | None) -> Iterator[dict]:
        for shard in self.shards:
            if start is not None and shard["last_key"].encode() < start:
                continue
            if stop is not None and shard["first_key"].encode() >= stop:
                break
            yield shard

    def raw_items(self, start: bytes | None = None, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        for shard in self._overlapping(start, stop):
            yield from self._reader(shard).raw_items(start, stop)

    def scan(self, start: bytes | None = None, stop: bytes | None = None, *,
             buffers: bool = False) -> Iterator[tuple[bytes, bytes | memoryview]]:
        for shard in self._overlapping(start, stop):
            yield from self._reader(shard).scan(start, stop, buffers=buffers)

    def keys(self) -> Iterator[bytes]:
        for shard in self.shards:
            yield from self._reader(shard).keys()

    def seek(self, position: int) -> bytes | None:
        """The key of record `position`: the shard is found from the counts, then walked within."""
        if position <= 0:
            return None
        at = position
        for shard in self.shards:
            if at < shard["count"]:
                for i, key in enumerate(self._reader(shard).keys()):
                    if i == at:
                        return bytes(key)
            at -= int(shard["count"])
        raise IndexError(f"{self.path}: no record {position} (the database has {len(self)})")

    def close(self) -> None:
        with self._lock:
            readers, self._open = list(self._open.values()), {}
        for reader in readers:
            reader.close()


def no_writer(folder: Path, *, shard_records: int = 1000) -> Any:
    """A sharded database is not written record by record: convert on a cluster makes it."""
    raise DatabaseError(f"{folder}: a sharded database is written by `datakit convert --scheduler/--cluster` "
                        "(one shard per partition); give --backend lmdb or leveldb")
