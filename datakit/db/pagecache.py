"""Page-cache control for the database writers: start writeback early, drop what is on disk.

A converter writes hundreds of megabytes that nothing reads back soon. Left
alone, the kernel keeps all of it in the page cache and flushes it in large
bursts (a writer's fsync then waits seconds), and on a virtual machine every
page of memory touched for the first time is expensive. `DropBehind` tells
the kernel, after each batch, to start writing the new bytes and to drop the
bytes an earlier batch already sent: the page cache of a conversion stays at
a few batches, and new pages reuse memory the kernel has just freed.

Linux only (sync_file_range); elsewhere every call is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
from collections.abc import Callable


def _libc() -> ctypes.CDLL:
    """glibc by its soname first: ctypes.util.find_library runs ldconfig in a subprocess, which made
    importing any database reader cost milliseconds; the search is the fallback (other C libraries)."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        from ctypes.util import find_library

        return ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)


def load_libc_call(name: str, *argtypes):
    """A Linux system call wrapper from libc (fallocate, sync_file_range, madvise), or None where there is none."""
    try:
        libc = _libc()
        fn = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


# fallocate(fd, mode 0 = allocate blocks and keep data, offset, length)
FALLOCATE = load_libc_call("fallocate64", ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
# sync_file_range(fd, offset, length, flags)
SYNC_FILE_RANGE = load_libc_call("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
SYNC_FILE_RANGE_WRITE = 2  # start writing back, do not wait
SYNC_FILE_RANGE_WAIT_ALL = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER: the range is on disk when it returns
# madvise(addr, length, MADV_DONTNEED): unmap pages of a shared file mapping (their data stays in the page cache)
MADVISE = load_libc_call("madvise", ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
MADV_DONTNEED = 4
DROP_MIN = 4 << 20  # pages are dropped in runs of at least this many bytes (fewer system calls)


class DropBehind:
    """Writeback and page dropping for one file written front to back.

    Call `advance(end)` after each batch, with `end` the offset up to which
    the file now holds data. Safe for the data at any moment: the kernel
    drops only clean pages, and a page dropped too early is read back from
    disk when it is needed again.
    """

    def __init__(self, fd: int, start: int = 0, *, drop: bool = True) -> None:
        """`start`: where new data begins (earlier bytes are left alone)."""
        self.fd = fd
        self.written_back = start
        self.dropped = start
        self.drop = drop

    def advance(self, end: int, unmap: Callable[[int, int], None] | None = None) -> None:
        """`unmap(offset, length)`: for a file that is also memory-mapped, unmaps a range before it
        is dropped (the kernel keeps mapped pages). Passed per call, not kept, so that no cycle
        delays freeing the writer that owns the mapping."""
        if SYNC_FILE_RANGE is None:
            return
        earlier = self.written_back
        if end > self.written_back:
            SYNC_FILE_RANGE(self.fd, self.written_back, end - self.written_back, SYNC_FILE_RANGE_WRITE)
            self.written_back = end
        if self.drop:
            # Only what an earlier batch sent to the disk: it is usually there by now, so the wait is short.
            self._drop_to(earlier, unmap)

    def _drop_to(self, end: int, unmap: Callable[[int, int], None] | None) -> None:
        end -= end % mmap.PAGESIZE
        if end - self.dropped < DROP_MIN:
            return
        start, length = self.dropped, end - self.dropped
        SYNC_FILE_RANGE(self.fd, start, length, SYNC_FILE_RANGE_WAIT_ALL)
        if unmap is not None:
            unmap(start, length)
        with contextlib.suppress(OSError):
            os.posix_fadvise(self.fd, start, length, os.POSIX_FADV_DONTNEED)
        self.dropped = end
