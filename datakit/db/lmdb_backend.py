"""LMDB: Caffe's default database, a folder with data.mdb and lock.mdb.

Written in large transactions (one per commit batch) with MDB_APPEND when the
keys arrive in order, which they do for ``%08d_path`` keys: appending fills
pages completely and skips the B-tree search. The map size starts modest and
doubles on MDB_MAP_FULL instead of failing, so the user never has to guess
the database's final size as Caffe's fixed 1 TB map asks them to.

The writer commits without flushing to disk (MDB_NOSYNC) and flushes only when
asked (`sync()`, which the converter calls before it records a checkpoint, and
`close()`): an msync of the write map after every transaction costs kernel CPU
comparable to decoding the image (benchmarks/RESULTS.md, convert). A killed process loses nothing committed (the pages are in the
shared page cache); only a crash of the whole machine can lose or damage what
was committed after the last `sync()`, which is why a resumed conversion
starts from the last checkpoint, never from the last commit.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from collections.abc import Iterator, Sequence

import lmdb

from datakit.db.base import KeyValueWriter, Reader
from datakit.db.pagecache import FALLOCATE, MADV_DONTNEED, MADVISE, DropBehind
from datakit.db.reserve import allocate, free_bytes, no_space
from datakit.db.reserve import size_text as len_text
from datakit.errors import CorruptDatabase, DatabaseError

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB to start; doubled whenever it fills up
PREALLOCATE_STEP = 256 << 20  # most disk blocks reserved ahead of the writer (as many as written so far, up
                              # to this), trimmed in close()


def _open_env(path: Path, **kwargs) -> lmdb.Environment:
    try:
        return lmdb.open(str(path), subdir=True, **kwargs)
    except lmdb.Error as err:
        raise DatabaseError(f"{path}: cannot open LMDB ({err})") from None


# What LMDB raises when the pages of data.mdb are not what its B-tree expects: a damaged file.
_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.PanicError)


@contextlib.contextmanager
def _lmdb_errors(path: Path, damaged: str = "the LMDB database is corrupt") -> Iterator[None]:
    """Turn lmdb.Error raised inside into DatakitError subclasses naming `path`, as one line.

    Every read and write of the backend runs inside this, so that `mean`,
    `inspect`, the trainer's Data layer and `convert --resume` all report a
    damaged database as such instead of as a py-lmdb traceback. `damaged`
    words the corruption case (the writer's resume says what to do).
    MDB_MAP_FULL passes through as it is: the writer grows the map and retries.
    """
    try:
        yield
    except lmdb.MapFullError:
        raise
    except _DAMAGE as err:
        raise CorruptDatabase(f"{path}: {damaged} ({err})") from None
    except lmdb.Error as err:
        raise DatabaseError(f"{path}: LMDB error ({err})") from None


OPEN_RESERVE = 1 << 20  # free space a writer needs to open: lock.mdb, the meta pages, a first transaction
LOCK_RESERVE = 64 << 10  # more than lock.mdb's reader table (126 readers) takes


def _reserve_to_open(folder: Path) -> None:
    """Refuse to open a writer on a (nearly) full disk, and reserve lock.mdb's blocks before LMDB maps it.

    LMDB writes its lock file and reader table through a memory map: on a
    full disk that is SIGBUS at open, before any transaction.
    """
    if free_bytes(folder) < OPEN_RESERVE:
        raise no_space(folder, OPEN_RESERVE, "opening the LMDB writer")
    lock = folder / "lock.mdb"
    if not lock.exists():
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if allocate(fd, 0, LOCK_RESERVE, keep_size=True) is False:  # LMDB sizes the file itself
                raise no_space(lock, LOCK_RESERVE, "the LMDB lock file")
        finally:
            os.close(fd)


def _refuse_truncated(env: lmdb.Environment, path: Path) -> None:
    """CorruptDatabase when data.mdb is shorter than the pages its meta page says are in use.

    A reader maps the file; touching a page past its end kills the process
    with SIGBUS (no Python error at all), so a file cut short (a copy that
    stopped, a full disk elsewhere) is refused before any page is read.
    """
    with _lmdb_errors(path):
        need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = (path / "data.mdb").stat().st_size
    if size < need:
        raise CorruptDatabase(f"{path}: the LMDB database is corrupt (data.mdb is cut short: {size} bytes "
                              f"of the {need} its last transaction wrote)")


class LmdbReader(Reader):
    """Read-only LMDB cursor in key order; no lock file is taken, so read-only media work."""

    backend = "lmdb"

    def __init__(self, path: str | os.PathLike, *, decode: bool = False, color: bool | None = True) -> None:
        super().__init__(path, decode=decode, color=color)
        self.env = _open_env(self.path, readonly=True, lock=False, max_readers=512)
        self._closed = False
        try:
            _refuse_truncated(self.env, self.path)
        except DatabaseError:
            self.close()
            raise

    def __len__(self) -> int:
        with _lmdb_errors(self.path):
            return int(self.env.stat()["entries"])

    def raw_items(self, start: bytes | None = None, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self.scan(start, stop, buffers=False):
            yield key, bytes(value)  # already bytes without buffers: no copy

    def scan(self, start: bytes | None = None, stop: bytes | None = None, *,
             buffers: bool = True) -> Iterator[tuple[bytes, bytes | memoryview]]:
        """(key, value) with `buffers=True` giving zero-copy views valid only until the next item.

        CorruptDatabase when a page met on the way is damaged.
        """
        with _lmdb_errors(self.path), (self.env.begin(buffers=True) if buffers else self.env.begin()) as txn:
            cur = txn.cursor()
            ok = cur.set_range(start) if start is not None else cur.first()
            while ok:
                key = bytes(cur.key())
                if stop is not None and key >= stop:
                    break
                yield key, cur.value()
                ok = cur.next()

    def keys(self) -> Iterator[bytes]:
        with _lmdb_errors(self.path), self.env.begin() as txn:
            yield from txn.cursor().iternext(keys=True, values=False)

    def close(self) -> None:
        """Close the environment. Do this before forking: a child must open its own."""
        if not self._closed:
            self._closed = True
            self.env.close()


class LmdbWriter(KeyValueWriter):
    """Append batches of (key, value) to an LMDB, one transaction per batch, durable at `sync()`."""

    backend = "lmdb"

    def __init__(self, path: str | os.PathLike, *, map_size: int = DEFAULT_MAP_SIZE,
                 drop_written: bool = False) -> None:
        """`drop_written`: keep only the last transactions of the new data in the page cache.

        False (the default) leaves the page cache alone. True: after each
        commit, the pages that earlier commits sent to the disk are waited for,
        unmapped and dropped from the page cache (a streaming writer's
        "no cache"). The conversion's page cache then stays at a few
        transactions however large the database, does not push the source
        images out of the cache, and the writer refills pages the kernel has
        just freed instead of memory touched for the first time (what it saves
        is measured in benchmarks/RESULTS.md, convert). The cost: a reader
        right after the conversion reads the database from disk, not from
        memory.
        """
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        _reserve_to_open(self.path)
        existing = (self.path / "data.mdb")
        if existing.exists():
            map_size = max(map_size, existing.stat().st_size * 2)
        # writemap: values are copied straight into the file's pages, half the CPU of LMDB's
        # malloc'd dirty pages; the file is then sparse up to the map size, trimmed in close().
        self.env = _open_env(self.path, map_size=map_size, meminit=False, max_dbs=0, writemap=True, sync=False)
        # Reopening data that is already there only ever continues an unfinished conversion.
        self._damaged = ("the unfinished database is damaged; start over with --overwrite"
                         if existing.exists() else "the LMDB database is corrupt")
        with _lmdb_errors(self.path, self._damaged), self.env.begin() as txn:
            cur = txn.cursor()
            self._last = bytes(cur.key()) if cur.last() else None
        # Writing into a hole of the sparse file makes the kernel allocate disk blocks page by page
        # inside the page fault; reserving them ahead with fallocate halved the writer's kernel CPU.
        self._fd: int | None = os.open(self.path / "data.mdb", os.O_RDWR) if FALLOCATE is not None else None
        self._allocated = self._used()
        self._map: tuple[int | None, int] = (None, 0)  # (address, map size) of data.mdb in this process
        # Pages of data.mdb that predate this writer are left alone.
        self._pages = None if self._fd is None else DropBehind(
            self._fd, self._allocated, drop=drop_written and MADVISE is not None)

    def _used(self) -> int:
        return (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]

    def _reserve(self, nbytes: int) -> None:
        """Allocate disk blocks for the next `nbytes` of values before LMDB writes them through the map.

        Required, not an optimisation: a store into the write map where the
        file system has no block left kills the process with SIGBUS. Raises
        DiskFull (nothing of the transaction written) when even the least
        the transaction may need cannot be reserved; on a file system that
        cannot reserve at all (no fallocate), it writes into holes as before.
        """
        if self._fd is None:
            return
        used = self._used()
        need = min(self.env.info()["map_size"], used + nbytes + nbytes // 8 + (1 << 20))
        if need <= self._allocated:
            return
        ahead = min(PREALLOCATE_STEP, max(4 * nbytes, used))  # a small database reserves little
        end = min(self.env.info()["map_size"], need + ahead)
        for target in (end, need):  # the step ahead if there is room, else only what this batch needs
            done = allocate(self._fd, self._allocated, target - self._allocated)
            if done:
                self._allocated = target
                return
            if done is None:  # not supported here: write into holes as before
                os.close(self._fd)
                self._fd = self._pages = None  # no page-cache control either (its fd is gone)
                return
        raise no_space(self.path / "data.mdb", need - self._allocated,
                       f"the next transaction ({len_text(nbytes)} of records)")

    def write(self, items: Sequence[tuple[bytes, bytes]]) -> bool:
        """Put every item in one transaction; grows the map and retries on MDB_MAP_FULL.

        Returns False: a commit is durable only at the next sync().
        """
        if not items:
            return False
        in_order = all(a[0] < b[0] for a, b in zip(items, items[1:]))
        append = in_order and (self._last is None or items[0][0] > self._last)
        self._reserve(sum(len(k) + len(v) for k, v in items))
        while True:
            try:
                with _lmdb_errors(self.path, self._damaged), self.env.begin(write=True) as txn:
                    cur = txn.cursor()
                    _, added = cur.putmulti(items, append=append)
                    if append and added != len(items):
                        raise DatabaseError(f"{self.path}: keys out of order while appending")
                break
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
                self._reserve(sum(len(k) + len(v) for k, v in items))  # the new part of the map is a hole
        last = max(items[-1][0], items[0][0]) if in_order else max(k for k, _ in items)
        self._last = last if self._last is None or last > self._last else self._last
        self._start_writeback()
        return False

    def _start_writeback(self) -> None:
        """Let the disk start on what was just committed, so a later sync() (and the last one) waits
        less; with drop_written, drop what earlier commits sent (see datakit.db.pagecache)."""
        if self._pages is not None:
            self._pages.advance(self._used(), unmap=self._unmap)

    def _map_address(self) -> int | None:
        """Where LMDB mapped data.mdb in this process (py-lmdb's info() says 0 unless MDB_FIXEDMAP).

        Read from /proc/self/maps: the shared mapping of this file at offset 0
        whose length is the current map size (it moves when the map grows).
        """
        size = self.env.info()["map_size"]
        if self._map[1] == size:
            return self._map[0]
        inode = os.fstat(self._fd).st_ino if self._fd is not None else -1
        found = None
        with contextlib.suppress(OSError, ValueError), open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                if len(fields) >= 6 and fields[4] == str(inode) and int(fields[2], 16) == 0 and "s" in fields[1]:
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    if hi - lo == size:
                        found = lo
                        break
        self._map = (found, size)  # None: the pages stay mapped, and the kernel keeps them cached
        return found

    def _unmap(self, start: int, length: int) -> None:
        """Unmap [start, start + length) of the write map, so the kernel may drop those pages.

        Safe for the data: unmapping a shared file mapping keeps its pages
        (dirty ones stay dirty) in the page cache; LMDB faults a page back in
        if it reuses it.
        """
        base = self._map_address()
        if base is not None:
            MADVISE(base + start, length, MADV_DONTNEED)

    def truncate_from(self, key: bytes) -> int:
        """Delete every record whose key is >= `key` (work redone after an interruption)."""
        self._reserve(0)  # the deletion copies the pages it changes
        with _lmdb_errors(self.path, self._damaged), self.env.begin(write=True) as txn:
            cur = txn.cursor()
            doomed = [bytes(k) for k in cur.iternext(keys=True, values=False)] if cur.set_range(key) else []
            for k in doomed:
                txn.delete(k)
            cur = txn.cursor()
            self._last = bytes(cur.key()) if cur.last() else None
        removed = len(doomed)
        self.sync()
        return removed

    def count(self) -> int:
        with _lmdb_errors(self.path, self._damaged):
            return int(self.env.stat()["entries"])

    def sync(self) -> None:
        """Flush every committed transaction to disk (before a checkpoint claims them)."""
        self.env.sync(True)

    def __del__(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Sync, close, and cut data.mdb back to its last used page (as LMDB without writemap leaves it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = self._pages = None
        self.env.sync(True)
        used = self._used()
        self.env.close()
        data = self.path / "data.mdb"
        if data.stat().st_size > used:
            os.truncate(data, used)


def open_writer(folder: str | os.PathLike, *, shard_records: int = 1000) -> LmdbWriter:
    """The registry's writer: written pages leave the page cache (a conversion streams)."""
    return LmdbWriter(folder, drop_written=True)
