"""Shared memory that forked workers write their results into, so that only small markers cross the pipe.

Sending each finished record (a raw 256x256 Datum is 196 KB) back through a
process pool's pipe costs the parent pipe reads, unpickling and a copy, and
the worker pickling and writing; benchmarks/RESULTS.md (convert) has the
measurements. With an arena the worker writes the record in place in a slot
of an anonymous shared mapping, only an :class:`ArenaMarker` (kind, offset,
size) travels through the pipe, and the parent's consumer reads straight from
the shared memory.

Contract:

* One slot per task in flight: the coordinator ``acquire()``s a slot before
  submitting a task and passes its number with the task; the worker writes
  through an :class:`ArenaSlot` (``put_bytes`` / ``put_array`` / ``put_into``),
  each returning a marker, or None when the payload does not fit, in which
  case the payload travels the ordinary way (nothing ever waits for room).
* ``MarkerKind.VIEW`` payloads are lent: ``take()`` returns a view into the
  slot, which stays in use until every view has been released (one
  :class:`Lease` per record, ``release()`` once it is written).
  ``MarkerKind.COPY`` payloads (arrays) are copied out at ``take()``.
* The mapping is anonymous and inherited by forked workers: nothing is left
  in /dev/shm whatever happens to the processes. Spawned workers cannot share
  it; callers then pass no arena.
"""

from __future__ import annotations

import contextlib
import enum
import mmap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["ArenaMarker", "ArenaSlot", "Lease", "MarkerKind", "SharedArena"]


class MarkerKind(enum.Enum):
    VIEW = "view"  # bytes read in place by the consumer; the slot is lent until released
    COPY = "copy"  # an array copied out as soon as it is taken


class ArenaMarker(NamedTuple):
    """Where a worker put one payload: `nbytes` at `offset` of the arena (shape/dtype for arrays)."""

    kind: MarkerKind
    offset: int
    nbytes: int
    shape: tuple[int, ...] = ()
    dtype: str = ""


class SharedArena:
    """`slots` slots of `slot_bytes` bytes each in one anonymous shared mapping."""

    def __init__(self, slots: int, slot_bytes: int) -> None:
        if slots <= 0 or slot_bytes <= 0:
            raise ValueError(f"an arena needs slots > 0 and slot_bytes > 0, not {slots} x {slot_bytes}")
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.mem = mmap.mmap(-1, slots * slot_bytes)
        self.view = memoryview(self.mem)
        self._free = list(range(slots))
        self._lent = [0] * slots
        self._lock = threading.Lock()

    # -- coordinator side ------------------------------------------------------------------------
    def acquire(self) -> int | None:
        """A free slot for the next task, or None when every slot is in use."""
        with self._lock:
            return self._free.pop() if self._free else None

    def lend(self, slot: int, records: int) -> None:
        """The task in `slot` returned `records` views that still live there (0: free it now)."""
        with self._lock:
            self._lent[slot] = records
            if records == 0:
                self._free.append(slot)

    def release(self, slot: int) -> None:
        """One view of `slot` is consumed; the slot is free once all of them are."""
        with self._lock:
            self._lent[slot] -= 1
            if self._lent[slot] == 0:
                self._free.append(slot)

    def take(self, marker: ArenaMarker) -> memoryview | np.ndarray:
        """The payload a worker put: a view of its bytes (VIEW, lent) or a copy of its array (COPY)."""
        end = marker.offset + marker.nbytes
        if marker.kind is MarkerKind.VIEW:
            return self.view[marker.offset:end]
        return np.frombuffer(self.view[marker.offset:end], marker.dtype).reshape(marker.shape).copy()

    def close(self) -> None:
        """Unmap, unless a view still points into the memory (then it goes with the last view)."""
        with contextlib.suppress(BufferError):
            self.view.release()
            self.mem.close()

    # -- worker side -------------------------------------------------------------------------------
    def slot(self, index: int) -> ArenaSlot:
        return ArenaSlot(self, index)


class ArenaSlot:
    """The writing end of one slot, for the task that owns it; payloads are packed one after another."""

    def __init__(self, arena: SharedArena, index: int) -> None:
        self.arena = arena
        self.index = index
        self.used = 0

    @property
    def room(self) -> int:
        return self.arena.slot_bytes - self.used

    def _claim(self, nbytes: int) -> int | None:
        if nbytes > self.room:
            return None
        pos = self.index * self.arena.slot_bytes + self.used
        self.used += nbytes
        return pos

    def put_into(self, nbytes: int, fill: Callable[[memoryview], None]) -> ArenaMarker | None:
        """Reserve `nbytes` and let `fill` write them in place (a VIEW payload); None if they do not fit."""
        pos = self._claim(nbytes)
        if pos is None:
            return None
        fill(self.arena.view[pos:pos + nbytes])
        return ArenaMarker(MarkerKind.VIEW, pos, nbytes)

    def put_bytes(self, data: bytes | memoryview) -> ArenaMarker | None:
        pos = self._claim(len(data))
        if pos is None:
            return None
        self.arena.view[pos:pos + len(data)] = data
        return ArenaMarker(MarkerKind.VIEW, pos, len(data))

    def put_array(self, array: np.ndarray) -> ArenaMarker | None:
        """Copy `array` in; the consumer gets a copy back (COPY), so the slot is free again at once."""
        pos = self._claim(array.nbytes)
        if pos is None:
            return None
        target = np.frombuffer(self.arena.mem, array.dtype, array.size, pos).reshape(array.shape)
        np.copyto(target, array)
        return ArenaMarker(MarkerKind.COPY, pos, array.nbytes, tuple(array.shape), array.dtype.str)


@dataclass(frozen=True, slots=True)
class Lease:
    """Carried by a payload that is a view into the arena: release() once it has been consumed."""

    arena: SharedArena
    slot: int

    def release(self) -> None:
        self.arena.release(self.slot)
