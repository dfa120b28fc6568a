"""LevelDB: Caffe's other key-value backend, a folder with CURRENT, LOG and .ldb tables.

LevelDB allows one process at a time to open a database (it holds the LOCK
file), so readers here are single-process; parallel consumers should read
`raw_items()` in one process and hand the values to workers.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from collections.abc import Iterator, Sequence

try:
    import plyvel
except ImportError:  # Python >= 3.13: plyvel has no wheels there; plyvel-next is its fork with the same API
    import plyvel_next as plyvel  # type: ignore[no-redef]

from datakit.db.base import KeyValueWriter, Reader
from datakit.errors import CorruptDatabase, DatabaseError


def _open_db(path: Path, **kwargs) -> plyvel.DB:
    """plyvel.DB with paranoid checks: an open replays the log of recent writes into a table, and
    without them LevelDB skips a damaged part of the log and deletes the log, so records were lost
    silently and for good; with them the open fails and leaves every file as it was."""
    try:
        return plyvel.DB(str(path), paranoid_checks=True, **kwargs)
    except plyvel.CorruptionError as err:
        raise CorruptDatabase(f"{path}: the LevelDB database is corrupt ({_text(err)}); "
                              "it was left as it is") from None
    except plyvel.IOError as err:
        if "lock" in str(err).lower():
            raise DatabaseError(f"{path}: LevelDB is open in another process (it allows only one); "
                                "wait for it to finish") from None
        raise DatabaseError(f"{path}: cannot open LevelDB ({err})") from None
    except plyvel.Error as err:
        raise DatabaseError(f"{path}: cannot open LevelDB ({err})") from None


@contextlib.contextmanager
def _leveldb_errors(path: Path, damaged: str = "the LevelDB database is corrupt") -> Iterator[None]:
    """Turn plyvel errors raised inside into one-line DatakitErrors naming `path` (as lmdb_backend does)."""
    try:
        yield
    except plyvel.CorruptionError as err:
        raise CorruptDatabase(f"{path}: {damaged} ({_text(err)})") from None
    except plyvel.Error as err:
        raise DatabaseError(f"{path}: LevelDB error ({_text(err)})") from None


def _text(err: Exception) -> str:
    """plyvel's message, which it gives as bytes."""
    arg = err.args[0] if err.args else err
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


class LevelDBReader(Reader):
    """Iterate a LevelDB in key order."""

    backend = "leveldb"

    def __init__(self, path: str | os.PathLike, *, decode: bool = False, color: bool | None = True) -> None:
        super().__init__(path, decode=decode, color=color)
        self.db = _open_db(self.path, create_if_missing=False)
        self._len: int | None = None

    def __len__(self) -> int:
        if self._len is None:
            with _leveldb_errors(self.path):
                self._len = sum(1 for _ in self.db.iterator(include_value=False))
        return self._len

    def raw_items(self, start: bytes | None = None, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        with _leveldb_errors(self.path):
            yield from self.db.iterator(start=start, stop=stop)

    def keys(self) -> Iterator[bytes]:
        with _leveldb_errors(self.path):
            yield from self.db.iterator(include_value=False)

    def close(self) -> None:
        if not self.db.closed:
            self.db.close()


class LevelDBWriter(KeyValueWriter):
    """Write batches of (key, value) to a LevelDB, one write batch per call, durable at `sync()`.

    Batches are written without fsync (a killed process loses nothing LevelDB
    accepted: its log is in the page cache); `sync()` writes an empty batch
    with sync=True, which fsyncs the log and so everything before it.
    """

    backend = "leveldb"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        # Caffe uses a 256 MB write buffer; 64 MB keeps memory bounded with little loss. No Snappy:
        # pixels and JPEG bytes barely compress, and compressing them halved the conversion's speed
        # (benchmarks/RESULTS.md, LevelDB); every LevelDB reader, Caffe's too, reads uncompressed
        # blocks (each block says how it is stored).
        self.db = _open_db(self.path, create_if_missing=True, write_buffer_size=64 << 20,
                           block_size=65536, max_open_files=100, compression=None)

    def write(self, items: Sequence[tuple[bytes, bytes]]) -> bool:
        with self.db.write_batch(sync=False) as batch:
            for key, value in items:
                batch.put(key, value)
        return False

    def truncate_from(self, key: bytes) -> int:
        with _leveldb_errors(self.path, "the unfinished database is damaged; start over with --overwrite"):
            keys = list(self.db.iterator(start=key, include_value=False))
        with self.db.write_batch(sync=True) as batch:
            for k in keys:
                batch.delete(k)
        return len(keys)

    def count(self) -> int:
        """A walk over the keys (LevelDB keeps no count): once per resume, not per batch."""
        with _leveldb_errors(self.path, "the unfinished database is damaged; start over with --overwrite"):
            return sum(1 for _ in self.db.iterator(include_value=False))

    def sync(self) -> None:
        """Make every batch written so far durable (the converter calls this before a checkpoint)."""
        self.db.write_batch(sync=True).write()

    def close(self) -> None:
        if not self.db.closed:
            self.sync()
            self.db.close()


def open_writer(folder: str | os.PathLike, *, shard_records: int = 1000) -> LevelDBWriter:
    return LevelDBWriter(folder)
