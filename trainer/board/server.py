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
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from trainer.board.safety import PathRefused, guard_middleware, resolve_under
from trainer.board.state import Board

__all__ = ["Board", "make_app", "MAX_UPLOAD", "BOARD_KEY"]

MAX_UPLOAD = 8 * 1024 * 1024
MAX_PROTOTXT = 4 * 1024 * 1024
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


BOARD_KEY = web.AppKey("board", Board)


# ---------------------------------------------------------------------------------------- handlers

def _board(request: web.Request) -> Board:
    return request.app[BOARD_KEY]


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "index.html")
    if name not in _STATIC:
        raise web.HTTPNotFound(text="no such file")
    data = (resources.files("trainer.board") / "static" / name).read_bytes()
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
    stamp = board.found.databases.get(name, (0, 0))
    return _json({**card.to_json(), "stamp": f"{stamp[0]}-{stamp[1]}"})


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
                  "labels": rel(files.labels), "mean": rel(files.mean),
                  "train_net": rel(files.train_net), "can_draw": dot_available()})


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
