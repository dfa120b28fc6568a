"""Run the board until interrupted: bind, print the URL (with the token off loopback), serve."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import IO

from trainer.board.safety import is_loopback, new_token
from trainer.board.server import MAX_UPLOAD, make_app

__all__ = ["serve", "board_url", "choose_token"]


def choose_token(host: str, token: str | None) -> str | None:
    """The token the board requires: the one given, else a random one when `host` is not loopback."""
    if token:
        return token
    return None if is_loopback(host) else new_token()


def board_url(host: str, port: int, token: str | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


async def _serve(root: Path, host: str, port: int, token: str | None, poll: float, stale_after: float | None,
                 max_upload: int, out: IO[str]) -> None:
    from aiohttp import web

    app = make_app(root, token=token, poll=poll, stale_after=stale_after, max_upload=max_upload)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    print(f"board: serving {root} at {board_url(host, bound, token)}", file=out, flush=True)
    if token:
        print("board: every request needs that token (it is printed only here)", file=out, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        print("board: stopped", file=out, flush=True)


def serve(root: str | Path, *, host: str = "127.0.0.1", port: int = 8470, token: str | None = None,
          poll: float = 1.0, stale_after: float | None = None, max_upload: int = MAX_UPLOAD,
          out: IO[str] = sys.stdout) -> None:
    """Serve the board of `root`; off loopback a token is required (a random one unless given)."""
    token = choose_token(host, token)
    asyncio.run(_serve(Path(root), host, port, token, poll, stale_after, max_upload, out))
