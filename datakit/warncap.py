"""Floods become summaries: the first few warnings of a kind on the terminal, then a count.

A careless list (50000 missing files, thousands of duplicate lines) would
otherwise bury the one line that says what went wrong. A :class:`WarningCap`
passes the first `limit` messages of its kind on, keeps every message (for the
``--report`` file) and, at :meth:`finish`, says how many more there were.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["TERMINAL_LIMIT", "WarningCap", "missing_under_root"]

TERMINAL_LIMIT = 10  # messages of one kind shown on the terminal; the rest are counted


class WarningCap:
    """Show the first `limit` messages through `emit`, keep them all in `messages`.

    `kind` names the messages in the closing count ("... and 40 more skipped
    images"); `where_all` says where the whole list is (e.g. "r.json"); without one,
    `hint` says how to get it (e.g. "--report FILE lists them all").
    """

    def __init__(self, emit: Callable[[str], None], kind: str, *, limit: int = TERMINAL_LIMIT,
                 where_all: str = "", hint: str = "") -> None:
        self.emit, self.kind, self.limit, self.where_all, self.hint = emit, kind, limit, where_all, hint
        self.messages: list[str] = []
        self._finished = False

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        if len(self.messages) <= self.limit:
            self.emit(message)

    @property
    def hidden(self) -> int:
        return max(0, len(self.messages) - self.limit)

    def finish(self) -> None:
        """Emit "... and N more KIND (M in all[; where])" once, when some were held back."""
        if self._finished or not self.hidden:
            return
        self._finished = True
        where = f"; all of them in {self.where_all}" if self.where_all else f"; {self.hint}" if self.hint else ""
        self.emit(f"... and {self.hidden} more {self.kind} ({len(self.messages)} in all{where})")


def missing_under_root(missing: int, listed: int, root: object, flag: str) -> str | None:
    """The one line for a root under which most listed files are missing (None when most are there).

    "Most" is more than half: a wrong root makes every file missing, while a few
    missing files are ordinary losses that the per-file messages describe.
    """
    if listed <= 0 or 2 * missing <= listed:
        return None
    return f"{missing} of {listed} files missing under {root}: is {flag} right?"
