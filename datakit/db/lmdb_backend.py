"""LMDB: Caffe's default database, a folder with data.mdb and lock.mdb.

Written in large transactions (one per commit batch) with MDB_APPEND when the
keys arrive in order, which they do for ``%08d_path`` keys: appending fills
pages completely and skips the B-tree search. The map size starts modest and
doubles on MDB_MAP_FULL instead of failing, so the user never has to guess
the database's final size as Caffe's fixed 1 TB map asks them to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import lmdb

from datakit.db import Reader
from datakit.errors import DatabaseError

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB to start; doubled whenever it fills up


def _open_env(path: Path, **kwargs) -> lmdb.Environment:
    try:
        return lmdb.open(str(path), subdir=True, **kwargs)
    except lmdb.Error as err:
        raise DatabaseError(f"{path}: cannot open LMDB ({err})") from None


class LmdbReader(Reader):
    """Read-only LMDB cursor in key order; no lock file is taken, so read-only media work."""

    backend = "lmdb"

    def __init__(self, path: str | os.PathLike, *, decode: bool = False, color: bool | None = True) -> None:
        super().__init__(path, decode=decode, color=color)
        self.env = _open_env(self.path, readonly=True, lock=False, max_readers=512)
        self._closed = False

    def __len__(self) -> int:
        return int(self.env.stat()["entries"])

    def raw_items(self, start: bytes | None = None, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self.scan(start, stop, buffers=False):
            yield key, value

    def scan(self, start: bytes | None = None, stop: bytes | None = None, *,
             buffers: bool = True) -> Iterator[tuple[bytes, bytes | memoryview]]:
        """(key, value) with `buffers=True` giving zero-copy views valid only until the next item."""
        with self.env.begin(buffers=buffers) as txn:
            cur = txn.cursor()
            ok = cur.set_range(start) if start is not None else cur.first()
            while ok:
                key = bytes(cur.key())
                if stop is not None and key >= stop:
                    break
                yield key, cur.value()
                ok = cur.next()

    def keys(self) -> Iterator[bytes]:
        with self.env.begin() as txn:
            yield from txn.cursor().iternext(keys=True, values=False)

    def close(self) -> None:
        """Close the environment. Do this before forking: a child must open its own."""
        if not self._closed:
            self._closed = True
            self.env.close()


class LmdbWriter:
    """Append batches of (key, value) to an LMDB, one durable transaction per batch."""

    backend = "lmdb"

    def __init__(self, path: str | os.PathLike, *, map_size: int = DEFAULT_MAP_SIZE) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        existing = (self.path / "data.mdb")
        if existing.exists():
            map_size = max(map_size, existing.stat().st_size * 2)
        # writemap: values are copied straight into the file's pages, half the CPU of LMDB's
        # malloc'd dirty pages; the file is then sparse up to the map size, trimmed in close().
        self.env = _open_env(self.path, map_size=map_size, meminit=False, max_dbs=0, writemap=True)
        with self.env.begin() as txn:
            cur = txn.cursor()
            self._last = bytes(cur.key()) if cur.last() else None

    def write(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Put every item in one transaction; grows the map and retries on MDB_MAP_FULL."""
        if not items:
            return
        in_order = all(a[0] < b[0] for a, b in zip(items, items[1:]))
        append = in_order and (self._last is None or items[0][0] > self._last)
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    cur = txn.cursor()
                    _, added = cur.putmulti(items, append=append)
                    if append and added != len(items):
                        raise DatabaseError(f"{self.path}: keys out of order while appending")
                break
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
        last = max(items[-1][0], items[0][0]) if in_order else max(k for k, _ in items)
        self._last = last if self._last is None or last > self._last else self._last

    def truncate_from(self, key: bytes) -> int:
        """Delete every record whose key is >= `key` (work redone after an interruption)."""
        with self.env.begin(write=True) as txn:
            cur = txn.cursor()
            doomed = [bytes(k) for k in cur.iternext(keys=True, values=False)] if cur.set_range(key) else []
            for k in doomed:
                txn.delete(k)
            cur = txn.cursor()
            self._last = bytes(cur.key()) if cur.last() else None
        removed = len(doomed)
        return removed

    def close(self) -> None:
        """Sync, close, and cut data.mdb back to its last used page (as LMDB without writemap leaves it)."""
        self.env.sync(True)
        used = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        self.env.close()
        data = self.path / "data.mdb"
        if data.stat().st_size > used:
            os.truncate(data, used)
