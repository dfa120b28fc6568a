"""Ctrl-C and SIGTERM held back to a point where the work is consistent, and a second one that stops at once.

A KeyboardInterrupt may be raised at any bytecode of the main thread: between
appending a record to a batch and counting it, inside a commit, inside a
progress save. Code that must stop at a consistent point (``datakit convert``:
commit what is complete, save the progress file, report the count the user
saw) runs inside :class:`DeferredStop` instead, which

* turns the first SIGINT or SIGTERM into a flag (``requested``), checked by
  the caller between units of work, at points where its state is whole;
* on leaving the block without an exception, delivers that first signal as it
  would have been delivered (calls the handler it replaced: Python's
  ``default_int_handler`` raises KeyboardInterrupt; ``datakit convert``'s
  SIGTERM handler notes "SIGTERM" and raises it too), so callers and messages
  upstream see the same interruption as before, only later;
* makes a second signal (any of them) stop at once: the handler the first
  signal would have run is called inside the signal handler, its KeyboardInterrupt re-raised as
  :class:`StoppedAtOnce`, so the caller can say that only its last durable
  point is kept. Further signals while that stop unwinds are ignored, so the
  cleanup that waits for a commit in flight is not cut short in turn.

Only signals whose handler is a Python function are held back (a SIGTERM
left at its default still kills the process, which resumes from the last
checkpoint as after ``kill -9``). Handlers can be set only in the main
thread; elsewhere the block holds nothing back and ``requested`` stays false.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["DeferredStop", "StoppedAtOnce"]


class StoppedAtOnce(KeyboardInterrupt):
    """A second Ctrl-C / SIGTERM while a held-back stop was being reached: stopped wherever the code was."""


class DeferredStop:
    """``with DeferredStop() as stop: ... if stop.requested: break ...`` (see the module docstring)."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = signals
        self.pending: int | None = None  # the first signal, held back
        self.at_once = False              # a second signal stopped the block at once
        self._previous: dict[int, Callable[[int, FrameType | None], Any]] = {}

    @property
    def requested(self) -> bool:
        return self.pending is not None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.pending is None:
            self.pending = signum  # only a flag: the caller stops at its next consistent point
            return
        if self.at_once:
            return  # already unwinding from a stop at once
        self.at_once = True
        try:  # as the first signal (it decides how the stop is named: exit 130 or 143), now
            self._previous[self.pending](self.pending, frame)
        except KeyboardInterrupt:
            raise StoppedAtOnce() from None

    def __enter__(self) -> DeferredStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                previous = signal.getsignal(sig)
                if callable(previous):
                    self._previous[sig] = previous
                    signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        if exc_type is None and self.pending is not None and not self.at_once:
            self._previous[self.pending](self.pending, None)  # the held-back signal, delivered now
