"""What every long command shares: its ``--report`` file and its progress bar.

* :func:`write_report`: one JSON format for every ``--report`` (indent 1,
  keys in the order given, a final newline), written atomically.
* :func:`progress_bar`: one policy for every bar: shown when asked
  (``--progress``), hidden when asked (``--no-progress``), otherwise shown
  only when stderr is a terminal. A hidden bar is a no-op object, so tqdm is
  imported only when a bar is drawn.
"""

from __future__ import annotations

import json
import os
import sys
from typing import IO, Any

__all__ = ["progress_bar", "progress_enabled", "write_report"]


def write_report(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` (JSON-serialisable) to `path` as the one report format, atomically."""
    from datakit.atomic import write_text_atomic
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def progress_enabled(enabled: bool | None = None, stream: IO | None = None) -> bool:
    """The TTY policy: `enabled` when given, otherwise whether `stream` (stderr) is a terminal."""
    if enabled is not None:
        return enabled
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


class _NoBar:
    """A hidden progress bar: accepts what tqdm accepts and draws nothing."""

    n = 0
    total = 0

    def update(self, n: int = 1) -> None:
        pass

    def refresh(self) -> None:
        pass

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(total: int | None, enabled: bool | None = None, *, desc: str = "", unit: str = "it",
                 initial: int = 0, stream: IO | None = None, **tqdm_args: Any) -> Any:
    """A tqdm bar on stderr, or a no-op bar when the policy (see progress_enabled) says not to draw one.

    Make bars after any worker pool has forked: tqdm starts a monitor thread.
    """
    stream = sys.stderr if stream is None else stream
    if not progress_enabled(enabled, stream):
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, **tqdm_args)
