"""One reader per database per process, shared by everyone in the process who reads it.

LMDB refuses to open one environment twice in a process, so a TRAIN and a TEST net, a resumed net, or
a PyTorch dataset beside a trainer Net reading the same database must share one reader. Readers are
counted: ``acquire_reader`` opens on first use, ``release_reader`` closes with the last user. The
process id is part of the key, so a forked child (a DataLoader worker) opens its own and never uses
an environment inherited from its parent.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from datakit.db import open_reader

_OPEN: dict[tuple[str, str | None, int], list[Any]] = {}
_LOCK = threading.Lock()


def _key(path: str | os.PathLike, backend: str | None) -> tuple[str, str | None, int]:
    return str(Path(path).resolve()), backend, os.getpid()


def acquire_reader(path: str | os.PathLike, backend: str | None = None) -> Any:
    """This process's reader of ``path`` (opened now if nobody holds one); pair with release_reader."""
    key = _key(path, backend)
    with _LOCK:
        entry = _OPEN.get(key)
        if entry is None:
            entry = _OPEN[key] = [open_reader(path, backend), 0]
        entry[1] += 1
        return entry[0]


def release_reader(path: str | os.PathLike, backend: str | None = None) -> None:
    """Give back one use of ``path``'s reader; the last one closes it. Unknown paths are ignored."""
    key = _key(path, backend)
    with _LOCK:
        entry = _OPEN.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _OPEN[key]
            entry[0].close()


__all__ = ["acquire_reader", "release_reader"]
