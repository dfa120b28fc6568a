"""One reader per database per process, shared by everyone in the process who reads it.

LMDB refuses to open one environment twice in a process, so a TRAIN and a TEST net, a resumed net, or
a PyTorch dataset beside a trainer Net reading the same database must share one reader. Readers are
counted: ``acquire_reader`` opens on first use, ``release_reader`` closes with the last user. The
process id is part of the key, so a forked child (a DataLoader worker) opens its own and never uses
an environment inherited from its parent. py-lmdb remembers every environment open in the process,
and a forked child inherits that memory: before the child opens its own, it closes its copy of the
parent's (which only unmaps the child's view; the parent's reader is untouched), else py-lmdb would
refuse with "already open in this process" (a notebook that read ``ds[0]`` before a DataLoader with
workers, or a trainer Net beside one).
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
            _close_inherited(key)
            entry = _OPEN[key] = [open_reader(path, backend), 0]
        entry[1] += 1
        return entry[0]


def _close_inherited(key: tuple[str, str | None, int]) -> None:
    """Drop the readers of ``key``'s database that this (forked) process inherited from its parent.

    LMDB ones are closed: py-lmdb refuses to open an environment its inherited registry lists.
    Others are only forgotten: closing LevelDB in a child would wait for background threads that
    did not survive the fork.
    """
    for other in [k for k in _OPEN if k[:2] == key[:2] and k[2] != key[2]]:
        reader = _OPEN.pop(other)[0]
        if _lmdb_inside(reader):
            reader.close()


def _lmdb_inside(reader: Any) -> bool:
    """An LMDB reader, or a sharded database of LMDB shards."""
    backend = getattr(reader, "backend", None)
    return backend == "lmdb" or (backend == "sharded" and getattr(reader, "index", {}).get("backend") == "lmdb")


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
