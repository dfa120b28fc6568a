"""The signals that make `trainer fit` stop cleanly: finish the iteration, snapshot, exit 128 + N.

SIGINT (Ctrl-C), SIGTERM (``kill``, a batch system, the grid runner) and SIGHUP (the terminal or
ssh session closed; Caffe's ``caffe train`` snapshots on it too) ask the solver to stop
at the end of the current iteration (:meth:`trainer.solver.Solver.request_stop`) and to write a
snapshot, so no finished iteration is lost.

Once a stop is under way, more of these signals change nothing: a user who presses Ctrl-C twice
must not lose the snapshot being written (a KeyboardInterrupt raised inside the write would
abandon it). The first repeat says once, on stderr, to wait; ``kill -KILL`` still ends the run at
once (the snapshot files are renamed into place whole, so none is left half written).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Protocol

from trainer.caffelog import glog_prefix

#: the signals that stop a run with a snapshot (SIGHUP where the platform has it)
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class _Stoppable(Protocol):
    stop_reason: str

    def request_stop(self, reason: str = ..., *, said: bool = ...) -> None: ...


def install_stop_handlers(solver: _Stoppable, opts: Any) -> dict[signal.Signals, Any]:
    """Route STOP_SIGNALS to ``solver.request_stop``; returns the handlers to put back afterwards.

    A SIGHUP already ignored when the run starts (``nohup trainer fit ...``) stays ignored: the
    user asked for the run to outlive the terminal.

    Only the main thread can install handlers (an API caller training in a thread keeps its own);
    then nothing is installed and ``{}`` is returned. The handler only sets flags: writing the log
    from it could land inside a write it interrupted ("reentrant call inside BufferedWriter"),
    so the solver logs the stop itself. The one exception is the wait notice on a repeat, written
    with a raw ``os.write`` to stderr (no Python buffer involved) when the log goes there.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    warned = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal warned
        name = signal.Signals(signum).name
        repeat = bool(solver.stop_reason)
        said = False
        if repeat and not warned:
            warned = True
            said = _say_on_stderr(opts, f"{name} received while stopping ({solver.stop_reason}): the snapshot "
                                        "is being written, wait for it (further signals are ignored until then)")
        solver.request_stop(name, said=said)

    previous: dict[signal.Signals, Any] = {}
    for sig in STOP_SIGNALS:
        if sig == getattr(signal, "SIGHUP", None) and signal.getsignal(sig) == signal.SIG_IGN:
            continue
        previous[sig] = signal.signal(sig, on_signal)
    return previous


def _say_on_stderr(opts: Any, message: str) -> bool:
    """Write one warning line straight to file descriptor 2 when the log's stream is stderr; whether it was.

    A terminal that hung up (SIGHUP) fails the write: that is ignored, there is nobody to tell.
    """
    stream = getattr(opts, "stream", None)
    if stream is not sys.stderr and stream is not sys.__stderr__:
        return False
    with contextlib.suppress(OSError, ValueError):
        os.write(2, (glog_prefix("W") + message + "\n").encode("utf-8", "replace"))
        return True
    return False


def hung_up(result: Any) -> bool:
    """Whether the run stopped on SIGHUP: its terminal may be gone, so writes to it can fail (EIO)."""
    return bool(getattr(result, "stopped_early", False)) and getattr(result, "stop_reason", "") == "SIGHUP"
