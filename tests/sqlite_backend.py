"""A database backend in one module, registered from outside datakit: Datums in an SQLite table.

Shows what adding a backend takes: recognise it on disk, a Reader (``__len__``
and ``raw_items``; scan/seek/keys come from the base class) and a Writer
(``write``, ``truncate_from``, ``close``). SQLite commits are durable, so
every ``write`` is a durable point (``syncs = False``: no separate flush).
Importing the module does not register it; tests call ``register()``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from datakit.db import Backend, register_backend
from datakit.db.base import KeyValueWriter, Reader

FILE = "records.sqlite"


def _is_sqlite(path: Path) -> bool:
    return path.is_dir() and (path / FILE).is_file()


class SqliteReader(Reader):
    backend = "sqlite"

    def __init__(self, path: str | os.PathLike, *, decode: bool = False, color: bool | None = True) -> None:
        super().__init__(path, decode=decode, color=color)
        self.db = sqlite3.connect(f"file:{self.path / FILE}?mode=ro", uri=True, check_same_thread=False)

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def raw_items(self, start: bytes | None = None, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        query, args = "SELECT key, value FROM records WHERE key >= ?", [start or b""]
        if stop is not None:
            query, args = query + " AND key < ?", [*args, stop]
        # not `yield from`: closing this generator must not close a cursor whose connection is closed
        for row in self.db.execute(query + " ORDER BY key", args):  # noqa: UP028
            yield row

    def close(self) -> None:
        self.db.close()


class SqliteWriter(KeyValueWriter):
    backend = "sqlite"
    syncs = False  # every commit is on disk: write() reports each batch as a durable point

    def __init__(self, folder: str | os.PathLike, *, shard_records: int = 1000) -> None:
        self.path = Path(folder)
        self.path.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path / FILE, check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS records (key BLOB PRIMARY KEY, value BLOB) WITHOUT ROWID")
        self.db.commit()

    def write(self, items: Sequence[tuple[bytes, bytes]]) -> bool:
        with self.db:
            self.db.executemany("INSERT INTO records VALUES (?, ?)", [(bytes(k), bytes(v)) for k, v in items])
        return True

    def truncate_from(self, key: bytes) -> int:
        with self.db:
            return self.db.execute("DELETE FROM records WHERE key >= ?", (key,)).rowcount

    def close(self) -> None:
        self.db.close()


BACKEND = Backend("sqlite", _is_sqlite, SqliteReader, SqliteWriter, hint=f"{FILE} for SQLite")


def register() -> Backend:
    return register_backend(BACKEND, replace=True)
