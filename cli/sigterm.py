"""SIGTERM taken as Ctrl-C by the long commands, which then exit 143.

`kill PID` and job schedulers stop a run with SIGTERM. Left at its default, it ended assemble,
convert, mean and grid run at once with no word (exit -15): no summary, and for grid run nets
recorded as "ended without a word". Inside :func:`sigterm_as_ctrl_c` it takes the path Ctrl-C
takes (finished work kept, the summary printed), and ``seen`` tells the command to say "stopped
by SIGTERM" and exit 143 where Ctrl-C exits 130.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_SIGTERM = 143  # 128 + 15, as a shell reports a process SIGTERM ended


class Sigterm:
    """Whether a SIGTERM arrived while the block ran."""

    def __init__(self) -> None:
        self.seen = False


@contextmanager
def sigterm_as_ctrl_c(to_sigint_handler: bool = False) -> Iterator[Sigterm]:
    """While the block runs, SIGTERM raises KeyboardInterrupt in the main thread.

    ``to_sigint_handler``: SIGTERM goes instead to whichever handler Ctrl-C has when it arrives
    (assemble's download loop installs its own stop there); when Ctrl-C is ignored or left at its
    default (a background job), KeyboardInterrupt is raised as without it.
    """
    state = Sigterm()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        state.seen = True
        if to_sigint_handler and signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, signal.SIG_DFL, None):
            signal.raise_signal(signal.SIGINT)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, previous)
