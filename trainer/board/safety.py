"""What keeps the board safe to leave running: paths stay under DIR, and a token off loopback.

Paths. Every file the board reads is named by a path relative to DIR, given in a query string
(``?path=runs/a/train.log``). aiohttp decodes the query once (so ``%2e%2e`` arrives as ``..``);
:func:`resolve_under` then refuses absolute paths, drive letters, backslashes, NUL and any ``..``
component, resolves symlinks, and refuses a result outside DIR (a symlink pointing out of DIR).
A name that is still percent-encoded after that one decoding is only a strange file name: it is
looked up literally and can no more leave DIR than any other.

Who may ask. Bound to a loopback address the board needs no token, but it only answers requests
whose ``Host`` names a loopback address (a web page elsewhere cannot reach it by rebinding a DNS
name to 127.0.0.1). Bound to any other address, every request must carry the token printed at
start-up: ``?token=`` (the page passes it on), an ``X-Board-Token`` header, or the cookie the
board sets when a valid ``?token=`` arrives. Uploads (classify) must also come from the board's
own page (``Origin`` checked) so another site cannot post to it.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
from pathlib import Path

from aiohttp import web

__all__ = ["PathRefused", "resolve_under", "relative_name", "is_loopback", "new_token", "guard_middleware",
           "COOKIE"]

COOKIE = "board_token"
_DRIVE = re.compile(r"^[A-Za-z]:")
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class PathRefused(Exception):
    """A path that would leave DIR, or that names nothing the board serves."""


def resolve_under(root: Path, rel: str | None) -> Path:
    """``root / rel`` resolved, refusing anything that is not inside `root` (itself resolved)."""
    if rel is None or rel == "":
        raise PathRefused("no path given")
    if "\x00" in rel or "\\" in rel:
        raise PathRefused("path has a NUL or a backslash")
    if rel.startswith("/") or rel.startswith("~") or _DRIVE.match(rel):
        raise PathRefused("absolute paths are refused: give a path relative to the board's folder")
    parts = rel.split("/")
    if any(p == ".." for p in parts):
        raise PathRefused("'..' is refused in paths")
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise PathRefused("path leaves the board's folder (a symlink out of it?)")
    return target


def relative_name(root: Path, path: Path) -> str:
    """The name the board uses for `path`: relative to `root`, with forward slashes."""
    return Path(os.path.relpath(path, root)).as_posix()


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, as given to --host) is this machine only."""
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(18)


def _host_name(request: web.Request) -> str:
    host = request.host or ""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def guard_middleware(token: str | None):
    """The middleware enforcing the rules in the module docstring (`token` None: loopback mode)."""

    @web.middleware
    async def guard(request: web.Request, handler):
        via_query = False
        if request.path == "/favicon.ico":   # asked by browsers on their own, even of a refusal page
            return web.Response(status=204)
        if token is None:
            if not is_loopback(_host_name(request)):
                raise web.HTTPForbidden(text="the board answers only requests to a loopback address "
                                             "(start it with --host to serve other machines, with a token)")
        else:
            given = request.query.get("token")
            via_query = given is not None
            given = given or request.headers.get("X-Board-Token") or request.cookies.get(COOKIE) or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise web.HTTPForbidden(text="a token is required: open the URL `trainer board` printed (...?token=...)")
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"{request.scheme}://{request.host}":
                raise web.HTTPForbidden(text="uploads are accepted only from the board's own page")
        response = await handler(request)
        if via_query:
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                                    "object-src 'none'; frame-ancestors 'none'")
        return response

    return guard
