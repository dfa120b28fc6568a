"""Disk space reserved before it is written, so a full disk is an error and not a crash.

An LMDB written through its memory map cannot report ENOSPC: a store into a
page whose block the file system cannot allocate kills the process with
SIGBUS. HDF5 reports it, but leaves its library in a state that may crash
when the file is closed. Both writers therefore allocate the blocks
(fallocate) before any byte goes there, and a reservation that fails for lack
of space becomes :class:`datakit.errors.DiskFull` with one line naming the file,
the space needed and the space free.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from datakit.db.pagecache import FALLOCATE
from datakit.errors import DiskFull

__all__ = ["FALLOC_FL_KEEP_SIZE", "allocate", "free_bytes", "no_space", "size_text"]

FALLOC_FL_KEEP_SIZE = 1  # reserve blocks past the end of the file without changing its size
_FULL = (errno.ENOSPC, errno.EDQUOT)


def allocate(fd: int, offset: int, length: int, *, keep_size: bool = False) -> bool | None:
    """Allocate disk blocks for [offset, offset + length) of `fd`.

    True: done. False: not enough space (ENOSPC or a quota). None: this
    file system or platform cannot reserve (the caller writes without a
    guarantee, as before). Without `keep_size`, a range past the end
    extends the file, and where fallocate is unsupported glibc's
    posix_fallocate emulation (writing into each block) is used instead.
    """
    if length <= 0:
        return True
    if FALLOCATE is not None:
        if FALLOCATE(fd, FALLOC_FL_KEEP_SIZE if keep_size else 0, offset, length) == 0:
            return True
        err = ctypes.get_errno()
        if err in _FULL:
            return False
        if keep_size:
            return None
    elif keep_size or not hasattr(os, "posix_fallocate"):
        return None
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as e:
        return False if e.errno in _FULL else None
    return True


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes this process may still write in `folder`'s file system (root may use the reserve)."""
    st = os.statvfs(folder)
    if st.f_blocks == 0:  # a file system that reports no sizes (some FUSE and network ones): do not guess
        return 1 << 62
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return int(blocks) * int(st.f_frsize)


def size_text(nbytes: int) -> str:
    """A size for a message: '3.2 MB' (10^6 bytes), '640 KB', '12 bytes'."""
    if nbytes >= 1_000_000:
        return f"{nbytes / 1e6:.1f} MB"
    if nbytes >= 1000:
        return f"{nbytes / 1e3:.0f} KB"
    return f"{nbytes} bytes"


def no_space(path: Path, needed: int, what: str) -> DiskFull:
    """The one line for a reservation that failed: the file, what it was for, needed and free."""
    try:
        free = size_text(free_bytes(path.parent if not path.is_dir() else path))
    except OSError:
        free = "unknown"
    return DiskFull(f"{path}: no space left on device: {what} needs {size_text(needed)} more, "
                    f"{free} free")
