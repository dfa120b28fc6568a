"""The board's web server (aiohttp): a static page, a JSON API, and server-sent events.

Routes (every ``path`` is relative to DIR and checked by :func:`trainer.board.safety.resolve_under`):

========================  =====================================================================
``GET /``                 the page (static HTML, CSS and a little JavaScript from the package)
``GET /api/overview``     what is under DIR: the run table's rows, grids, databases, models
``GET /api/run``          one run: its row, curve SVGs, point counts, the nets it names
``GET /api/grid``         one grid: status rows, counts, the accuracy-against-n figure
``GET /api/db``           one database: inspect summary, label histogram (``/api/db/sheet``: PNG)
``GET /api/model``        one model folder: deploy net, weights, labels, mean
``POST /api/classify``    the request body is an image; answers the top-5 (``?path=`` a model)
``GET /api/draw``         a net prototxt drawn as SVG (``trainer draw``)
``GET /api/events``       server-sent events: ``change`` each time something under DIR changed
========================  =====================================================================

Everything that reads files runs in a worker thread, so a big log or database never stalls the
other requests; results are kept until the files' sizes or modification times change. Any
failure of one item (a corrupt log, a half-written database) comes back as that item's
``error``, never as a server crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from trainer.board import discover
from trainer.board.safety import PathRefused, guard_middleware, resolve_under

__all__ = ["Board", "make_app", "MAX_UPLOAD"]

MAX_UPLOAD = 8 * 1024 * 1024
MAX_PROTOTXT = 4 * 1024 * 1024
REPARSE_FACTOR = 10.0
_STATIC = {"index.html": "text/html", "board.css": "text/css", "board.js": "text/javascript"}


def _json_safe(value: Any) -> Any:
    """NaN and infinities as None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(_json_safe(data), status=status, dumps=functools.partial(json.dumps, allow_nan=False))


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
        return path, rel.strip("/")

    def scrub(self, text: str) -> str:
        """An error line without the board's absolute folder (names stay relative, as on the page)."""
        return text.replace(str(self.root) + "/", "").replace(str(self.root), ".")

    async def rescan(self) -> bool:
        found = await asyncio.to_thread(discover.scan, self.root, max_entries=self.max_entries)
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


BOARD_KEY = web.AppKey("board", Board)


# ---------------------------------------------------------------------------------------- handlers

def _board(request: web.Request) -> Board:
    return request.app[BOARD_KEY]


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "index.html")
    if name not in _STATIC:
        raise web.HTTPNotFound(text="no such file")
    data = resources.files("trainer.board").joinpath("static", name).read_bytes()
    return web.Response(body=data, content_type=_STATIC[name], headers={"Cache-Control": "no-cache"})


async def overview(request: web.Request) -> web.Response:
    board = _board(request)
    await board.rescan()
    found = board.found

    def rows() -> list[dict]:
        return [board.run_row(board.root / name, name) for name in sorted(found.runs)]

    runs = await asyncio.to_thread(rows)
    return _json({"root": board.root.name, "version": board.version, "runs": runs,
                  "grids": sorted(found.grids), "databases": sorted(found.databases),
                  "models": sorted(found.models), "truncated": found.truncated,
                  "grid_support": (board.grid or _grid_module()) is not None})


def _grid_module() -> Any:
    from trainer.board.grids import load_grid_module
    return load_grid_module()


async def _known(board: Board, name: str, kind: str) -> None:
    """404 unless `name` is a database / model found under DIR (looking again when it is new)."""
    if name not in getattr(board.found, kind):
        await board.rescan()
        if name not in getattr(board.found, kind):
            raise web.HTTPNotFound(text=f"{name}: no {kind[:-1]} of that name under the board's folder")


async def run_card(request: web.Request) -> web.Response:
    board = _board(request)
    path, name = board.resolve(request)
    await _known(board, name, "runs")    # only logs: never read a database file as text
    return _json(await asyncio.to_thread(board.run_card, path, name))


async def grid_card(request: web.Request) -> web.Response:
    from trainer.board.grids import grid_card as card
    board = _board(request)
    path, name = board.resolve(request)
    if not (path / "grid.json").is_file():
        raise web.HTTPNotFound(text=f"{name}: no grid.json there")
    result = await asyncio.to_thread(card, path, name, board.grid)
    if result.get("error"):
        result["error"] = board.scrub(result["error"])
    return _json(result)


async def db_card(request: web.Request) -> web.Response:
    board = _board(request)
    path, name = board.resolve(request)
    await _known(board, name, "databases")
    card = await board.in_slow(board.db_card, path, name)
    return _json(card.to_json())


async def db_sheet(request: web.Request) -> web.Response:
    board = _board(request)
    path, name = board.resolve(request)
    await _known(board, name, "databases")
    card = await board.in_slow(board.db_card, path, name)
    if card.sheet_png is None:
        raise web.HTTPNotFound(text=f"{name}: no contact sheet ({card.error or 'empty database'})")
    return web.Response(body=card.sheet_png, content_type="image/png")


async def model_card(request: web.Request) -> web.Response:
    from trainer.board.models import model_files
    board = _board(request)
    path, name = board.resolve(request)
    await _known(board, name, "models")
    try:
        files = model_files(path)
    except Exception as err:  # noqa: BLE001
        return _json({"path": name, "error": board.scrub(str(err))})
    rel = lambda p: p.relative_to(board.root).as_posix() if p is not None else None  # noqa: E731
    from trainer.draw import dot_available
    return _json({"path": name, "error": None, "deploy": rel(files.deploy), "weights": [rel(p) for p in files.weights],
                  "labels": rel(files.labels), "mean": rel(files.mean), "can_draw": dot_available()})


async def classify(request: web.Request) -> web.Response:
    from trainer.board.models import classify_bytes, model_files
    board = _board(request)
    path, name = board.resolve(request)
    await _known(board, name, "models")
    data = await request.read()   # aiohttp refuses bodies over client_max_size with 413
    if not data:
        return _json({"error": "no image in the request body"}, status=400)

    def work() -> list[dict]:
        files = model_files(path)
        weights = files.weights[0]
        wanted = request.query.get("weights")
        if wanted:
            chosen = resolve_under(board.root, wanted)
            if chosen not in files.weights:
                raise PathRefused(f"{wanted}: not a .caffemodel of this model")
            weights = chosen
        return classify_bytes(board.classifiers.get(files, weights), data)

    try:
        top = await board.in_slow(work)
    except PathRefused as err:
        raise web.HTTPForbidden(text=str(err)) from None
    except Exception as err:  # noqa: BLE001 - a bad image or model: one line back to the page
        return _json({"error": board.scrub(" ".join(str(err).split()))}, status=422)
    return _json({"error": None, "top": top})


async def draw(request: web.Request) -> web.Response:
    board = _board(request)
    path, name = board.resolve(request)
    if not path.is_file():
        raise web.HTTPNotFound(text=f"{name}: no such file")
    if path.stat().st_size > MAX_PROTOTXT:
        raise web.HTTPUnprocessableEntity(text=f"{name}: too large for a net prototxt")
    rankdir = request.query.get("rankdir", "TB")
    if rankdir not in ("LR", "TB"):
        raise web.HTTPBadRequest(text="rankdir: LR or TB")
    try:
        svg = await board.in_slow(board.drawing, path, rankdir)
    except Exception as err:  # noqa: BLE001 - no dot, or a prototxt that does not parse
        raise web.HTTPUnprocessableEntity(text=board.scrub(" ".join(str(err).split()))) from None
    return web.Response(body=svg, content_type="image/svg+xml")


async def events(request: web.Request) -> web.StreamResponse:
    """``change`` events carrying the board's version number, and a comment every 15 s to keep alive."""
    board = _board(request)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    seen = -1
    try:
        while not board.closing:
            if board.version != seen:
                seen = board.version
                await resp.write(f"event: change\ndata: {seen}\n\n".encode())
            waiter = board.changed
            try:
                await asyncio.wait_for(waiter.wait(), timeout=15)
            except asyncio.TimeoutError:
                await resp.write(b": keep-alive\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


def make_app(root: str | Path, *, token: str | None = None, poll: float = 1.0, stale_after: float | None = None,
             grid: Any = None, max_upload: int = MAX_UPLOAD) -> web.Application:
    """The board for folder `root`; `token` None serves loopback only, else requires the token."""
    app = web.Application(middlewares=[guard_middleware(token)], client_max_size=max_upload)
    board = Board(root, poll=poll, stale_after=stale_after, grid=grid)
    app[BOARD_KEY] = board
    app.router.add_get("/", static_file)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/api/overview", overview)
    app.router.add_get("/api/run", run_card)
    app.router.add_get("/api/grid", grid_card)
    app.router.add_get("/api/db", db_card)
    app.router.add_get("/api/db/sheet", db_sheet)
    app.router.add_get("/api/model", model_card)
    app.router.add_post("/api/classify", classify)
    app.router.add_get("/api/draw", draw)
    app.router.add_get("/api/events", events)

    async def start_watch(app: web.Application) -> Any:
        task = asyncio.create_task(board.watch())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        board.slow.shutdown(wait=False, cancel_futures=True)

    async def end_streams(app: web.Application) -> None:
        board.closing = True
        board.changed.set()

    app.cleanup_ctx.append(start_watch)
    app.on_shutdown.append(end_streams)
    return app
