"""Progress of a long test pass as plain lines, for output that no terminal shows.

A progress bar (tqdm) is drawn only on a terminal; a log file, ``nohup``, a notebook or a grid's
``train.log`` got nothing during a test pass, and CaffeNet's 100 test batches at iteration 0 take
minutes on a CPU. `PassProgress` says how far a pass is in a line now and then:

- nothing at all for a pass shorter than ``FIRST_AFTER`` seconds (logs of quick runs stay as
  Caffe writes them), then at most one line every ``EVERY`` seconds, never at the last batch
  (the pass's result lines come at once);
- the text is chosen so that log readers skip it: ``Test pass of net #K at iteration N: D/T
  batches in S s, about L s left``. It has no ``Iteration N`` (Caffe's parse_log.py takes the
  iteration from any line with one; ours looks for that word too), no ``output #``, ``lr =``,
  ``loss =``, ``Test score`` or ``Test loss:``; it does hold ``Test `` so that parse_log.sh's
  ``grep -B 1 'Test '`` still catches the ``Iteration N, Testing net`` line before it.

The two thresholds are read when a pass starts, so a test can set them to 0 to see a line per batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.caffelog import CaffeLog

#: seconds a pass runs before its first progress line
FIRST_AFTER = 10.0
#: seconds between two progress lines of one pass
EVERY = 30.0


class PassProgress:
    """Calls ``emit(line)`` now and then while `total` batches are done (see the module docstring)."""

    def __init__(self, total: int, emit: Callable[[str], None], label: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.emit, self.label, self.clock = total, emit, label, clock
        self.first_after, self.every = FIRST_AFTER, EVERY
        self.started = clock()
        self.last: float | None = None

    def update(self, done: int) -> None:
        """`done` batches of `total` are finished."""
        if done >= self.total:
            return
        now = self.clock()
        elapsed = now - self.started
        if elapsed < self.first_after or (self.last is not None and now - self.last < self.every):
            return
        self.last = now
        left = elapsed / max(done, 1) * (self.total - done)
        self.emit(f"{self.label}: {done}/{self.total} batches in {elapsed:.0f} s, about {left:.0f} s left")


def test_pass_progress(log: CaffeLog, progress: bool | None, batches: int, net_id: int,
                       iteration: int) -> tuple[Any, PassProgress | None]:
    """A `trainer fit` test pass's bar, and its progress lines for where no bar is seen.

    The bar: the one policy of ``datakit.report.progress_bar`` on the log's stream (stderr unless
    ``--quiet``): drawn when `progress` is True, never when False, else only on a terminal, shown
    after 2 s and erased when done, so logs and quick tests look as Caffe's do. The lines (none when
    `progress` is False): in the log file and, where no bar is drawn, on the stream too.
    """
    from datakit.report import progress_bar, progress_enabled  # noqa: PLC0415 - tqdm only when a bar is drawn
    stream = log.stream
    drawn = (stream is not None or progress is True) and progress_enabled(progress, stream)
    if not drawn:
        bar = progress_bar(batches, False)
    else:
        bar = progress_bar(batches, True, desc=f"test net #{net_id}", unit="batch", leave=False,
                           stream=stream, **({} if progress else {"delay": 2}))
    if progress is False:
        return bar, None
    return bar, PassProgress(batches, lambda text: log.info(text, to_stream=not drawn),
                             f"Test pass of net #{net_id} at iteration {iteration}")
