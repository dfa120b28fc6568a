"""The board's state: its folder, what was found there, and what was read, kept by file stamps.

Separate from the HTTP handlers (:mod:`.server`) so the rules of when a file is read again live
in one place: a log when its size or modification time changed (but not more often than
REPARSE_FACTOR times its last parse took), a database when a file in it changed, a drawing when
its prototxt changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from trainer.board import discover
from trainer.board.safety import PathRefused, resolve_under

__all__ = ["Board", "REPARSE_FACTOR"]

REPARSE_FACTOR = 10.0


class Board:
    """The state behind one app: its folder, what was found there, and caches keyed by file stamps."""

    def __init__(self, root: str | Path, *, poll: float = 1.0, stale_after: float | None = None,
                 grid: Any = None, max_entries: int = 50_000) -> None:
        from trainer.board.models import ClassifierCache
        from trainer.board.runs import STALE_AFTER

        self.root = Path(root).resolve()
        if not self.root.is_dir():
            from datakit.errors import ConfigError
            raise ConfigError(f"{root}: not a folder")
        self.poll = poll
        self.stale_after = STALE_AFTER if stale_after is None else stale_after
        self.grid = grid                      # an object shaped like trainer.grid (tests); None: import it
        self.max_entries = max_entries
        self.found = discover.Found()
        self.sniffer = discover.LogSniffer()  # which logs are training logs, read once per change
        self.version = 0
        self.closing = False                  # set at shutdown: event streams end at once
        self.changed = asyncio.Event()
        self._runs: dict[str, tuple[Any, Any, float]] = {}
        self.clock = time.monotonic
        # Inspecting a big database or loading a net takes long: their own threads, so the
        # quick requests (the table, the curves) never wait behind them; one inspect per database.
        self.slow = ThreadPoolExecutor(max_workers=2, thread_name_prefix="board-slow")
        self._db_locks: dict[str, threading.Lock] = {}
        self._dbs: dict[str, tuple[Any, Any]] = {}
        self._draws: dict[tuple, bytes] = {}
        self.classifiers = ClassifierCache()

    # -- paths and scanning ----------------------------------------------------------------------
    def resolve(self, request: web.Request, key: str = "path") -> tuple[Path, str]:
        rel = request.query.get(key)
        try:
            path = resolve_under(self.root, rel)
        except PathRefused as err:
            raise web.HTTPForbidden(text=f"{rel!r}: {err}") from None
        assert rel is not None  # resolve_under refuses a missing path
        return path, rel.strip("/")

    def scrub(self, text: str) -> str:
        """An error line without the board's absolute folder (names stay relative, as on the page)."""
        return text.replace(str(self.root) + "/", "").replace(str(self.root), ".")

    async def rescan(self) -> bool:
        found = await asyncio.to_thread(discover.scan, self.root, max_entries=self.max_entries,
                                        sniffer=self.sniffer)
        changed = found.fingerprint() != self.found.fingerprint()
        self.found = found
        if changed:
            self.version += 1
            self.changed.set()
            self.changed = asyncio.Event()
        return changed

    async def watch(self) -> None:
        """Look under DIR every `poll` seconds, or every REPARSE_FACTOR times a look takes when
        that is longer (a huge folder is then looked at less often rather than all the time)."""
        while True:
            start = time.monotonic()
            with contextlib.suppress(Exception):  # a folder vanishing mid-walk: try again next time
                await self.rescan()
            await asyncio.sleep(max(self.poll, REPARSE_FACTOR * (time.monotonic() - start)))

    # -- runs -----------------------------------------------------------------------------------
    def run_info(self, path: Path, name: str) -> Any:
        """The parsed log (or its error line), parsed again when the file changed, but not more
        often than every REPARSE_FACTOR times the last parse took: a long log that grows every
        second then costs the board a bounded share of a core, not the training's."""
        from trainer.board.runs import read_run
        stamp = discover._stamp(path)
        cached = self._runs.get(name)
        now = self.clock()
        if cached and (cached[0] == stamp or now < cached[2]):
            return cached[1]
        try:
            info: Any = read_run(path, name)
        except Exception as err:  # noqa: BLE001 - a malformed log is an error on its card
            info = self.scrub(" ".join(str(err).split()))
        done = self.clock()
        self._runs[name] = (stamp, info, done + REPARSE_FACTOR * (done - now))
        return info

    def run_row(self, path: Path, name: str) -> dict:
        from trainer.board.runs import error_row, run_row
        info = self.run_info(path, name)
        if isinstance(info, str):
            return error_row(name, info)
        return run_row(info, stale_after=self.stale_after)

    def run_card(self, path: Path, name: str) -> dict:
        from trainer.board.runs import curves_svg, point_counts
        from trainer.draw import dot_available
        info = self.run_info(path, name)
        row = self.run_row(path, name)
        if isinstance(info, str):
            return {"row": row, "error": info, "charts": {}, "points": {}, "nets": [], "can_draw": False}
        return {"row": row, "error": None, "charts": curves_svg(info), "points": point_counts(info),
                "nets": self.nets_beside(path, info.nets), "can_draw": dot_available()}

    def nets_beside(self, log: Path, named: list[str]) -> list[str]:
        """Net files for the run's drawing: those the log names ("Creating training net from X",
        X relative to where fit ran: looked for from the log's folder up to DIR), then the other
        net prototxts in the log's folder. Only files inside DIR."""
        out: list[str] = []

        def add(p: Path) -> None:
            try:
                rel = p.resolve().relative_to(self.root).as_posix()
                resolve_under(self.root, rel)
            except (ValueError, OSError, PathRefused):
                return
            if p.is_file() and rel not in out:
                out.append(rel)

        folders = [log.parent] + [f for f in log.parent.parents if f == self.root or self.root in f.parents]
        for name in named:
            if Path(name).is_absolute() or ".." in Path(name).parts:
                continue
            for folder in folders:
                if (folder / name).is_file():
                    add(folder / name)
                    break
        for p in sorted(log.parent.glob("*.prototxt")):
            if "solver" not in p.name:
                add(p)
        return out

    # -- databases, drawings --------------------------------------------------------------------
    def db_card(self, path: Path, name: str) -> Any:
        from trainer.board.databases import database_card
        with self._db_locks.setdefault(name, threading.Lock()):
            stamp = self.found.databases.get(name)
            cached = self._dbs.get(name)
            if cached and stamp is not None and cached[0] == stamp:
                return cached[1]
            card = database_card(path, name, root=self.root)
            if card.error:
                card.error = self.scrub(card.error)
            self._dbs[name] = (stamp, card)
            return card

    async def in_slow(self, fn, *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.slow, fn, *args)

    def drawing(self, path: Path, rankdir: str) -> bytes:
        from datakit.formats.prototxt import read_net
        from trainer.draw import render
        key = (str(path), discover._stamp(path), rankdir)
        if key not in self._draws:
            if len(self._draws) > 32:
                self._draws.clear()
            self._draws[key] = render(read_net(path), "svg", rankdir=rankdir)
        return self._draws[key]
