"""Ctrl-C for in-process tests: SIGINT this process once a condition holds, and again if Python dropped it.

A KeyboardInterrupt raised while the main thread runs a weakref callback or a ``__del__`` is
printed and dropped by Python ("Exception ignored in ..."), as a user's Ctrl-C would be there (a
user presses it again). With Dask's client such callbacks run often: one CI run lost the only
Ctrl-C of a test that way. ``ctrl_c_when`` watches ``sys.unraisablehook`` for a dropped
KeyboardInterrupt and sends the signal again.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def ctrl_c_when(ready: Callable[[], bool], timeout: float = 60.0, retries: int = 5) -> Iterator[None]:
    """While the block runs, SIGINT this process as soon as ``ready()`` is true (polled every 10 ms)."""
    dropped = threading.Event()
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            dropped.set()
        else:
            previous(unraisable)

    main = threading.main_thread().ident
    assert main is not None

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                for _ in range(retries):
                    # To the main thread itself: a process-wide kill may be delivered to this watcher
                    # thread, and then the main thread's blocking call (a sleep, a wait) is not cut short
                    # (one CI run waited out a 10 s sleep that way).
                    signal.pthread_kill(main, signal.SIGINT)  # as Ctrl-C in the client's terminal
                    if not dropped.wait(2.0):
                        return
                    dropped.clear()
                    # Not at once: the main thread is leaving the callback that dropped it, and a signal
                    # that lands between Python's last check and its next blocking call (sleep, wait)
                    # does not cut that call short (a rerun in two processes waited out a 10 s sleep).
                    time.sleep(0.1)
                return
            time.sleep(0.01)

    sys.unraisablehook = hook
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        watcher.join()
        sys.unraisablehook = previous
