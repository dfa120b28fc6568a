"""Files that appear whole or not at all.

Every output of datakit (image files, lists, reports, means, snapshots) is
written to a temporary name in the destination folder, flushed, fsynced and
renamed over the final name, so that an interrupted run never leaves a
half-written file under a name a later run would trust.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import IO
from collections.abc import Iterator


_umask_lock = threading.Lock()
_umask: int | None = None


def _default_mode() -> int:
    """0o666 less the process umask: the mode open() would have given the file.

    mkstemp creates files 0600; without this, every image, list and model we
    write would be private to the user even where their umask says otherwise.
    """
    global _umask
    with _umask_lock:
        if _umask is None:
            _umask = os.umask(0)
            os.umask(_umask)
    return 0o666 & ~_umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = True,
                 encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success rename it to `path`.

    On any exception the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    if path.is_dir():  # say so naming the output, not the temporary file the rename would fail on
        raise IsADirectoryError(errno.EISDIR, "is a folder; name a file to write", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as err:
        raise_if_disk_full(err, path)
        raise
    try:
        if "b" not in mode and encoding is None:
            encoding = "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise_if_disk_full(err, path)
        raise


def raise_if_disk_full(err: OSError, path: Path) -> None:
    """A full disk (ENOSPC, EDQUOT) as DiskFull: the one line every full-disk message is (the file, the
    space free, whether an old file was kept); any other error returns for the caller to raise."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return
    from datakit.db.reserve import free_bytes, size_text  # noqa: PLC0415 - only on this rare path
    from datakit.errors import DiskFull  # noqa: PLC0415
    try:
        free = size_text(free_bytes(path.parent))
    except OSError:
        free = "unknown"
    raise DiskFull(f"{path}: no space left on device to write it ({free} free); "
                   f"{'the old file is kept' if path.exists() else 'nothing was written'}") from None


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Write `data` to `path` atomically."""
    with atomic_write(path, "wb", fsync=fsync) as fh:
        fh.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = True) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_write(path, "w", fsync=fsync) as fh:
        fh.write(text)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk; best effort where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install_dir(work: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename the finished folder `work` to `final`; an old `final` is removed only after the rename."""
    work, final = Path(work), Path(final)
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(work, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex (read in 1 MB blocks)."""
    return file_digest(path, "sha256")


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """The `algorithm` (a hashlib name: sha256, sha1, ...) digest of a file's bytes, hex, read in 1 MB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
