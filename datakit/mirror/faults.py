"""The mirror's misbehaviour: which fault a path gets, and one small handler per fault kind.

Which fault a URL gets is decided by a hash of (seed, path), not by chance at
request time, so a test can predict exactly how many of each kind a run will
see (`fault_for`). Each kind's handler is registered in ``FAULTS`` by the
``@fault`` decorator beside its definition, so a new fault is one entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from datakit.download.outcome import Kind
from datakit.errors import ConfigError

if TYPE_CHECKING:
    from datakit.mirror.server import Mirror

# Fault kinds in the order their rates are laid out on [0, 1): keep this order stable,
# `fault_for` depends on it. What the downloader should report for each is in EXPECTED_REASON.
FAULT_KINDS: tuple[str, ...] = (
    "not_found",    # 404
    "gone",         # 410
    "server_error",  # 500, every time
    "throttle",     # 429 with Retry-After, every time
    "flaky",        # 503 on the first request for the path, then the image
    "reset",        # connection reset before any response
    "truncated",    # Content-Length announced, half the body sent, connection closed
    "placeholder",  # redirect to Flickr-style "photo unavailable" image
    "not_image",    # an HTML page with status 200
    "corrupt",      # image/jpeg content type, bytes that do not decode
    "huge",         # an endless chunked body (no Content-Length)
    "bomb",         # a PNG whose header announces 50000 x 50000 pixels
    "drip",         # the image, one small piece at a time, slower than any read timeout
)

# The downloader's failure kind for each fault ("ok" when it must succeed after a retry).
EXPECTED_REASON: dict[str, Kind] = {
    "not_found": Kind.HTTP_404, "gone": Kind.HTTP_410, "server_error": Kind.HTTP_500, "throttle": Kind.HTTP_429,
    "flaky": Kind.OK, "reset": Kind.CONNECTION, "truncated": Kind.TRUNCATED, "placeholder": Kind.PLACEHOLDER,
    "not_image": Kind.NOT_IMAGE, "corrupt": Kind.UNDECODABLE, "huge": Kind.TOO_LARGE, "bomb": Kind.TOO_MANY_PIXELS,
    "drip": Kind.TIMEOUT,
}

PLACEHOLDER_PATH = "/photo_unavailable.png"


def placeholder_bytes() -> bytes:
    """The mirror's "photo unavailable" image: a fixed, hand-built 8-bit gray BMP.

    Built byte by byte (no encoder involved) so its sha1 never changes; the
    downloader rejects it like Flickr's own placeholder.
    """
    w, h = 100, 75
    row = bytes([0xC8] * w)  # light gray, rows already 4-byte aligned
    pixels = row * h
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    header = struct.pack("<2sIHHI", b"BM", offset + len(pixels), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 0, len(pixels), 2835, 2835, 256, 0)
    return header + info + palette + pixels


MIRROR_PLACEHOLDER_SHA1 = hashlib.sha1(placeholder_bytes()).hexdigest()


def _bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A small valid-looking PNG whose header claims a huge size (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
            + chunk(b"IEND", b""))


def unit_hash(seed: int, text: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by (seed, text, salt)."""
    digest = hashlib.blake2b(f"{seed}:{salt}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def fault_for(path: str, faults: Mapping[str, float], seed: int = 0) -> str | None:
    """The fault the mirror injects for `path` (None for a clean answer).

    The rates of `faults` are laid end to end on [0, 1) in FAULT_KINDS order
    and the path's hash picks one; so each kind hits a fixed, predictable set
    of paths, about `rate` of them.
    """
    unknown = set(faults) - set(FAULT_KINDS)
    if unknown:
        raise ConfigError(f"unknown fault kinds {sorted(unknown)} (known: {', '.join(FAULT_KINDS)})")
    u = unit_hash(seed, path, "fault")
    edge = 0.0
    for kind in FAULT_KINDS:
        edge += faults.get(kind, 0.0)
        if u < edge:
            return kind
    return None


BOMB_PNG = _bomb_png()


# ---------------------------------------------------------------------------------------------
# One handler per kind: (mirror, request, path, label) -> the response, or None to serve the image.

Handler = Callable[["Mirror", web.Request, str, int], Awaitable[web.StreamResponse | None]]
FAULTS: dict[str, Handler] = {}


def fault(kind: str) -> Callable[[Handler], Handler]:
    """Register the handler of fault `kind` (one of FAULT_KINDS; registering one twice is a bug)."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault {kind!r} is not in FAULT_KINDS")

    def register(handler: Handler) -> Handler:
        if kind in FAULTS:
            raise ValueError(f"fault {kind!r} is already registered")
        FAULTS[kind] = handler
        return handler
    return register


def _abort(request: web.Request) -> None:
    """Close the connection with a TCP reset (SO_LINGER 0), like a peer that went away."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _status(kind: str, status: int, text: str, **headers: str) -> None:
    async def answer(mirror: Mirror, request: web.Request, path: str, label: int) -> web.StreamResponse:
        return web.Response(status=status, text=text, headers=headers or None)
    fault(kind)(answer)


_status("not_found", 404, "404 Not Found\n")
_status("gone", 410, "410 Gone\n")
_status("server_error", 500, "500 Internal Server Error\n")
_status("throttle", 429, "slow down\n", **{"Retry-After": "0"})


@fault("flaky")
async def _flaky(mirror: Mirror, request: web.Request, path: str, label: int) -> web.StreamResponse | None:
    return web.Response(status=503, text="try again\n") if mirror.stats.hits[path] == 1 else None


@fault("reset")
async def _reset(mirror: Mirror, request: web.Request, path: str, label: int) -> web.StreamResponse:
    _abort(request)
    return web.Response(status=500)  # never reaches the client


@fault("placeholder")
async def _placeholder(mirror: Mirror, request: web.Request, path: str, label: int) -> web.StreamResponse:
    raise web.HTTPFound(PLACEHOLDER_PATH)


@fault("not_image")
async def _not_image(mirror: Mirror, request: web.Request, path: str, label: int) -> web.StreamResponse:
    return web.Response(text="<html><body>Sign in to see this photo</body></html>", content_type="text/html")


@fault("corrupt")
async def _corrupt(mirror: Mirror, request: web.Request, path: str, label: int) -> web.StreamResponse:
    return web.Response(body=hashlib.sha256(path.encode()).digest() * 64, content_type="image/jpeg")


@fault("bomb")
async def _bomb(mirror: Mirror, request: web.Request, path: str, label: int) -> web.StreamResponse:
    return web.Response(body=BOMB_PNG, content_type="image/png")


@fault("truncated")
async def _truncated(mirror: Mirror, request: web.Request, path: str, label: int) -> web.StreamResponse:
    data = mirror.image_bytes(path, label)
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    resp.content_length = len(data)
    await resp.prepare(request)
    await resp.write(data[: len(data) // 2])
    _abort(request)
    return resp


@fault("huge")
async def _huge(mirror: Mirror, request: web.Request, path: str, label: int) -> web.StreamResponse:
    data = mirror.image_bytes(path, label)
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    chunk = data[:2] + b"\x00" * (1024 * 1024 - 2)
    sent = 0
    with contextlib.suppress(ConnectionError, RuntimeError):
        while sent < mirror.config.huge_limit:
            await resp.write(chunk)
            sent += len(chunk)
            chunk = b"\x00" * len(chunk)
    return resp


@fault("drip")
async def _drip(mirror: Mirror, request: web.Request, path: str, label: int) -> web.StreamResponse:
    data = mirror.image_bytes(path, label)
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    resp.content_length = len(data)
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError, RuntimeError):
        for i in range(0, len(data), 64):
            await resp.write(data[i:i + 64])
            await asyncio.sleep(mirror.config.drip_interval)
    return resp


assert set(FAULTS) == set(FAULT_KINDS), sorted(set(FAULT_KINDS) - set(FAULTS))
