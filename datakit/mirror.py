"""A local HTTP server that serves a manifest's images: for the demo, the tests and the benchmarks.

``datakit assemble --mirror http://127.0.0.1:PORT`` keeps each URL's path and
swaps its scheme and host for the mirror's, so the mirror answers
``/<server>/<id>_<secret>.jpg`` for every row of a manifest. It serves either
files from a folder, or images generated on the fly from a seed, whose look
(colour palette, texture orientation and frequency, contrast) depends on the
row's label, so that a small net can learn the "styles" offline.

Faults can be injected to exercise every failure path of the downloader. Which
fault a URL gets is decided by a hash of (seed, path), not by chance at request
time, so a test can predict exactly how many of each kind a run will see
(`fault_for`). The same hash gives every synthetic image its variation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from collections.abc import Iterator, Mapping, Sequence

import cv2
import numpy as np
from aiohttp import web

from datakit.errors import ConfigError
from datakit.manifest import Row

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
EXPECTED_REASON: dict[str, str] = {
    "not_found": "http_404", "gone": "http_410", "server_error": "http_500", "throttle": "http_429",
    "flaky": "ok", "reset": "connection", "truncated": "truncated", "placeholder": "placeholder",
    "not_image": "not_image", "corrupt": "undecodable", "huge": "too_large", "bomb": "too_many_pixels",
    "drip": "timeout",
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


def _unit_hash(seed: int, text: str, salt: str = "") -> float:
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
    u = _unit_hash(seed, path, "fault")
    edge = 0.0
    for kind in FAULT_KINDS:
        edge += faults.get(kind, 0.0)
        if u < edge:
            return kind
    return None


# ---------------------------------------------------------------------------------------------
# Synthetic "styles"

@dataclass(frozen=True)
class Style:
    """How a label looks: palette (HSV, OpenCV ranges), texture and contrast."""

    hue: float          # 0..180
    hue_spread: float
    saturation: float   # 0..255
    value: float        # 0..255
    contrast: float     # amplitude of the texture in value units
    orientation: float  # degrees
    frequency: float    # cycles across the image
    blur: float         # Gaussian sigma in pixels (0: none)
    noise: float        # per-pixel noise sigma


# The demo's five styles (manifests/demo.csv.gz labels 0..4), loosely after their Flickr names.
DEMO_STYLES: tuple[Style, ...] = (
    Style(hue=160, hue_spread=25, saturation=60, value=215, contrast=25, orientation=0, frequency=1.5,
          blur=2.0, noise=4),    # Pastel: light, washed-out pinks/blues, soft waves
    Style(hue=0, hue_spread=0, saturation=0, value=70, contrast=90, orientation=45, frequency=6,
          blur=0, noise=10),     # Noir: gray, dark, hard diagonal stripes
    Style(hue=20, hue_spread=8, saturation=200, value=200, contrast=50, orientation=90, frequency=2,
          blur=0, noise=6),      # Sunny: warm orange/yellow, horizontal bands
    Style(hue=105, hue_spread=10, saturation=40, value=150, contrast=12, orientation=135, frequency=3,
          blur=4.0, noise=3),    # Hazy: low-contrast gray-blue, blurred
    Style(hue=60, hue_spread=90, saturation=180, value=150, contrast=80, orientation=20, frequency=14,
          blur=0, noise=12),     # Texture: any hue, fine high-frequency grating
)


def style_for_label(label: int) -> Style:
    """The demo styles for labels 0..4, then a deterministic spread of palettes and textures."""
    if 0 <= label < len(DEMO_STYLES):
        return DEMO_STYLES[label]
    g = (label * 0.6180339887) % 1.0
    return Style(hue=180 * g, hue_spread=10, saturation=80 + 150 * ((label * 0.37) % 1), value=90 + 130 * ((label * 0.53) % 1),
                 contrast=20 + 60 * ((label * 0.71) % 1), orientation=(label * 37) % 180,
                 frequency=1.5 + (label * 7) % 12, blur=(label % 3), noise=6)


@lru_cache(maxsize=4096)
def synthetic_image(path: str, label: int, seed: int = 0, *, quality: int = 90) -> bytes:
    """The JPEG the mirror serves for `path`: the label's style plus per-image variation.

    Sizes vary between 112-160 x 96-128 pixels, like small web photos; every
    parameter of the style is jittered by the path's hash, and noise is added,
    so no two images are alike but the label stays learnable.
    """
    st = style_for_label(label)
    rng = np.random.RandomState(int(_unit_hash(seed, path, "image") * 2**32))
    w, h = int(rng.randint(112, 161)), int(rng.randint(96, 129))
    theta = np.deg2rad(st.orientation + rng.normal(0, 8))
    freq = st.frequency * (1 + 0.15 * rng.normal())
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * np.cos(theta) + yy * np.sin(theta)) / max(w, h)
    wave = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    blob = np.sin(2 * np.pi * (xx / w * rng.uniform(0.3, 1.2) + yy / h * rng.uniform(0.3, 1.2))
                  + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    hue = (st.hue + rng.uniform(-st.hue_spread, st.hue_spread) + 6 * blob) % 180
    sat = np.clip(st.saturation + rng.normal(0, 15) + 20 * blob, 0, 255)
    val = st.value + rng.normal(0, 12) + st.contrast * wave + 15 * blob
    val = val + rng.normal(0, st.noise, size=(h, w)).astype(np.float32)
    hsv = np.stack([np.broadcast_to(hue, (h, w)), np.broadcast_to(sat, (h, w)), np.clip(val, 0, 255)], axis=-1)
    img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    if st.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), st.blur)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


# ---------------------------------------------------------------------------------------------
# The server

@dataclass
class MirrorConfig:
    """What the mirror serves and how it misbehaves."""

    labels: dict[str, int] = field(default_factory=dict)  # URL path -> label (from a manifest)
    directory: str | None = None      # serve files from here (by last path component) instead of synthesising
    seed: int = 0
    faults: dict[str, float] = field(default_factory=dict)
    latency: float = 0.0              # seconds added before every response
    any_path: bool = False            # answer unknown paths too (label from the path's hash)
    num_labels: int = 5               # labels for unknown paths with any_path
    drip_interval: float = 1.0        # seconds between the pieces of a "drip" body
    huge_limit: int = 256 * 1024 * 1024  # stop streaming a "huge" body after this many bytes

    @classmethod
    def from_rows(cls, rows: Sequence[Row], **kw) -> MirrorConfig:
        from urllib.parse import urlsplit
        return cls(labels={urlsplit(r.url).path: r.label for r in rows}, **kw)


@dataclass
class MirrorStats:
    """Requests seen, per path (tests use it to prove what was and was not downloaded)."""

    hits: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    served: int = 0


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


class Mirror:
    """The aiohttp application behind `datakit mirror`."""

    def __init__(self, config: MirrorConfig):
        self.config = config
        self.stats = MirrorStats()
        self._bomb = _bomb_png()
        self._placeholder = placeholder_bytes()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self.handle)
        return app

    def _label(self, path: str) -> int | None:
        label = self.config.labels.get(path)
        if label is None and self.config.any_path:
            label = int(_unit_hash(self.config.seed, path, "label") * self.config.num_labels)
        return label

    def _body(self, path: str, label: int) -> tuple[bytes, str] | None:
        if self.config.directory:
            name = path.rsplit("/", 1)[-1]
            file = Path(self.config.directory) / name
            if not name or name in (".", "..") or not file.is_file():
                return None
            ctype = {"png": "image/png", "gif": "image/gif", "bmp": "image/bmp"}.get(
                file.suffix.lower().lstrip("."), "image/jpeg")
            return file.read_bytes(), ctype
        return synthetic_image(path, label, self.config.seed), "image/jpeg"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config
        path = request.rel_url.raw_path
        self.stats.hits[path] += 1
        if cfg.latency > 0:
            await asyncio.sleep(cfg.latency)
        if path == PLACEHOLDER_PATH:
            return web.Response(body=self._placeholder, content_type="image/bmp")
        label = self._label(path)
        if label is None:
            return web.Response(status=404, text="not in this mirror's manifest\n")
        fault = fault_for(path, cfg.faults, cfg.seed) if cfg.faults else None
        if fault is not None:
            self.stats.faults[fault] += 1
            response = await self._fault(fault, request, path, label)
            if response is not None:
                return response
        body = self._body(path, label)
        if body is None:
            return web.Response(status=404, text="no such file in the mirror's folder\n")
        self.stats.served += 1
        return web.Response(body=body[0], content_type=body[1])

    async def _fault(self, fault: str, request: web.Request, path: str, label: int) -> web.StreamResponse | None:
        if fault == "not_found":
            return web.Response(status=404, text="404 Not Found\n")
        if fault == "gone":
            return web.Response(status=410, text="410 Gone\n")
        if fault == "server_error":
            return web.Response(status=500, text="500 Internal Server Error\n")
        if fault == "throttle":
            return web.Response(status=429, text="slow down\n", headers={"Retry-After": "0"})
        if fault == "flaky":
            if self.stats.hits[path] == 1:
                return web.Response(status=503, text="try again\n")
            return None
        if fault == "reset":
            _abort(request)
            return web.Response(status=500)  # never reaches the client
        if fault == "placeholder":
            raise web.HTTPFound(PLACEHOLDER_PATH)
        if fault == "not_image":
            return web.Response(text="<html><body>Sign in to see this photo</body></html>",
                                content_type="text/html")
        if fault == "corrupt":
            rnd = hashlib.sha256(path.encode()).digest() * 64
            return web.Response(body=rnd, content_type="image/jpeg")
        if fault == "bomb":
            return web.Response(body=self._bomb, content_type="image/png")
        body = self._body(path, label)
        data = body[0] if body else synthetic_image(path, label, self.config.seed)
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        if fault == "truncated":
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            _abort(request)
            return resp
        if fault == "huge":
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            chunk = data[:2] + b"\x00" * (1024 * 1024 - 2)
            sent = 0
            with contextlib.suppress(ConnectionError, RuntimeError):
                while sent < self.config.huge_limit:
                    await resp.write(chunk)
                    sent += len(chunk)
                    chunk = b"\x00" * len(chunk)
            return resp
        if fault == "drip":
            resp.content_length = len(data)
            await resp.prepare(request)
            with contextlib.suppress(ConnectionError, RuntimeError):
                for i in range(0, len(data), 64):
                    await resp.write(data[i:i + 64])
                    await asyncio.sleep(self.config.drip_interval)
            return resp
        raise AssertionError(fault)


@dataclass
class MirrorHandle:
    """A running mirror: its base URL and its request statistics."""

    url: str
    stats: MirrorStats
    mirror: Mirror


@contextlib.contextmanager
def serve_mirror(config: MirrorConfig, host: str = "127.0.0.1", port: int = 0) -> Iterator[MirrorHandle]:
    """Run a mirror in a background thread of this process; yields its handle (port 0: any free port)."""
    mirror = Mirror(config)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    async def start() -> None:
        # a short shutdown: drips and endless bodies must not hold the caller's exit
        runner = web.AppRunner(mirror.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        box["runner"] = runner
        box["port"] = runner.addresses[0][1]

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as err:  # report bind errors to the caller
            box["error"] = err
            loop.close()
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(box["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=main, name="datakit-mirror", daemon=True)
    thread.start()
    started.wait()
    if "error" in box:
        raise ConfigError(f"mirror cannot listen on {host}:{port}: {box['error']}")
    try:
        yield MirrorHandle(f"http://{host}:{box['port']}", mirror.stats, mirror)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def run_mirror(config: MirrorConfig, host: str = "127.0.0.1", port: int = 0, *, announce=print) -> None:
    """Serve until interrupted (the `datakit mirror` command); announces the URL once listening."""
    async def main() -> None:
        runner = web.AppRunner(Mirror(config).app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as err:
            raise ConfigError(f"mirror cannot listen on {host}:{port}: {err.strerror or err}") from None
        announce(f"http://{host}:{runner.addresses[0][1]}")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())


@contextlib.contextmanager
def mirror_subprocess(args: Sequence[str] = (), *, python: str | None = None,
                      timeout: float = 30.0) -> Iterator[str]:
    """Start ``datakit mirror --port 0 ARGS`` as a child process; yields its base URL.

    A separate process keeps the server off the caller's CPU core and GIL (the
    demo and the benchmark use this); the child is terminated on exit.
    """
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([python or sys.executable, "-m", "cli.datakit_main", "mirror", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = _read_line(proc, timeout)
        if not line.startswith("http://"):
            err = proc.stderr.read() if proc.poll() is not None else ""
            raise ConfigError(f"datakit mirror did not start: {(line + err).strip() or 'no output'}")
        yield line.strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""
