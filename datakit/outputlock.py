"""One writer at a time per output: an advisory lock beside it, held while it is written.

Used for ``datakit convert``'s output database and ``trainer fit``'s snapshot prefix. Two
``datakit convert`` runs into one output (a second terminal, a rerun while the first still works)
each believed the work folder was theirs: LMDB's map then changed under the first (``Bus error``)
and a later ``--resume`` built on records the other run had deleted. The lock is a hidden file
``.NAME.lock`` in the output's folder, taken with ``flock`` (released by the kernel however the
holder ends, ``kill -9`` included, so a stale file never blocks anyone) and removed when released.
It holds the holder's process id, for the message. Where ``fcntl`` is missing (Windows) nothing is
locked.
"""

from __future__ import annotations

import os
from pathlib import Path

from datakit.atomic import raise_if_disk_full
from datakit.errors import DatabaseError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]


class OutputLock:
    """The lock of output ``final``: ``acquire()`` or a DatabaseError naming the holder.

    ``busy`` is the refusal after ``FINAL: ``, with ``{who}`` standing for " (process N)" when known.
    """

    def __init__(self, final: str | os.PathLike,
                 busy: str = "another datakit convert{who} is writing this database; wait for it to finish, "
                             "or name another output") -> None:
        self.final = Path(final)
        self.busy = busy
        self.path = self.final.parent / f".{self.final.name}.lock"
        self._fd: int | None = None
        self._made: list[Path] = []

    def acquire(self) -> None:
        if fcntl is None or self._fd is not None:
            return
        missing = [d for d in (self.path.parent, *self.path.parent.parents) if not d.exists()]
        self._made = missing  # the folders made here, deepest first: release removes them if empty
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise_if_disk_full(err, self.final)
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                who = f" (process {holder})" if holder.isdigit() else ""
                raise DatabaseError(f"{self.final}: " + self.busy.format(who=who)) from None
            try:  # the holder may have removed the file between our open and our lock: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:  # the pid is only for another run's message: a full disk must not stop this one here
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        self._fd = fd

    def release(self) -> None:
        """Remove the file, then unlock (in that order: a waiting run then locks a file nobody removes)."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        for folder in self._made:  # a refused or failed run leaves no empty folder behind
            try:
                folder.rmdir()
            except OSError:
                break
        self._made = []
