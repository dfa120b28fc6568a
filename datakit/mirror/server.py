"""The mirror's HTTP server: an aiohttp application, run in a thread (tests) or in the foreground (the command)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from datakit.errors import ConfigError
from datakit.manifest import Row
from datakit.mirror.faults import FAULT_KINDS, FAULTS, PLACEHOLDER_PATH, fault_for, placeholder_bytes, unit_hash
from datakit.mirror.styles import synthetic_image


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
    def from_rows(cls, rows: Sequence[Row], **kw: Any) -> MirrorConfig:
        """Serve these manifest rows: each URL's path answers with its row's label."""
        return cls(labels={urlsplit(r.url).path: r.label for r in rows}, **kw)

    @classmethod
    def for_manifest(cls, manifest: str | None, *, directory: str | None = None, any_path: bool = False,
                     cache_dir: str | None = None, columns: dict[str, str | None] | None = None,
                     **kw: Any) -> MirrorConfig:
        """What `datakit mirror` serves: a manifest's URLs, a folder, or any path; validated.

        With no manifest every path is answered (from the folder, or synthesised). `cache_dir` and
        `columns` (url_column, label_column, split_column) read the manifest as ``assemble`` does.
        """
        if not manifest and not any_path and not directory:
            raise ConfigError("datakit mirror: give --manifest NAME_OR_CSV, --directory DIR or --any-path")
        if manifest:
            from datakit.manifest import open_manifest  # noqa: PLC0415 - only when a manifest is named
            given = {k: v for k, v in (columns or {}).items() if v is not None}
            config = cls.from_rows(open_manifest(manifest, cache_dir, **given)[1], directory=directory,
                                   any_path=any_path, **kw)
        else:
            config = cls(directory=directory, any_path=True, **kw)
        if not config.labels:
            config.any_path = True
        return config.validate()

    def validate(self) -> MirrorConfig:
        """Refuse fault rates and limits that make no sense; returns self."""
        unknown = set(self.faults) - set(FAULT_KINDS)
        if unknown:
            raise ConfigError(f"unknown fault kinds {sorted(unknown)} (known: {', '.join(FAULT_KINDS)})")
        bad = {k: v for k, v in self.faults.items() if not 0 <= v <= 1}
        if bad:
            raise ConfigError(f"--fault rates must be in 0..1: {', '.join(f'{k}={v:g}' for k, v in bad.items())}")
        if sum(self.faults.values()) > 1:
            raise ConfigError(f"--fault rates add up to {sum(self.faults.values()):g}, more than 1")
        if self.latency < 0:
            raise ConfigError(f"--latency {self.latency * 1000:g}: must be 0 or more milliseconds")
        if self.num_labels < 1:
            raise ConfigError(f"--num-labels {self.num_labels}: must be positive")
        if self.drip_interval < 0:
            raise ConfigError(f"--drip-interval {self.drip_interval:g}: must be 0 or more seconds")
        if self.directory is not None and not Path(self.directory).is_dir():
            raise ConfigError(f"--directory {self.directory}: no such folder")
        return self


@dataclass
class MirrorStats:
    """Requests seen, per path (tests use it to prove what was and was not downloaded)."""

    hits: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    served: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0           # most requests handled at once (per-host politeness, seen by the host)


class Mirror:
    """The aiohttp application behind `datakit mirror`."""

    def __init__(self, config: MirrorConfig):
        self.config = config
        self.stats = MirrorStats()
        self._placeholder = placeholder_bytes()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)   # HEAD too, as a real image host answers it
        return app

    def _label(self, path: str) -> int | None:
        label = self.config.labels.get(path)
        if label is None and self.config.any_path:
            label = int(unit_hash(self.config.seed, path, "label") * self.config.num_labels)
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

    def image_bytes(self, path: str, label: int) -> bytes:
        """The image `path` would get (from the folder, else synthesised): what a fault cuts or drips."""
        body = self._body(path, label)
        return body[0] if body else synthetic_image(path, label, self.config.seed)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.stats.in_flight += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        try:
            return await self._handle(request)
        finally:
            self.stats.in_flight -= 1

    async def _handle(self, request: web.Request) -> web.StreamResponse:
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
            response = await FAULTS[fault](self, request, path, label)
            if response is not None:
                return response
        body = self._body(path, label)
        if body is None:
            return web.Response(status=404, text="no such file in the mirror's folder\n")
        self.stats.served += 1
        return web.Response(body=body[0], content_type=body[1])


@dataclass
class MirrorHandle:
    """A running mirror: its base URL and its request statistics."""

    url: str
    stats: MirrorStats
    mirror: Mirror


@dataclass
class _Listening:
    """What the server thread reports back once it listens (or why it could not)."""

    runner: web.AppRunner | None = None
    port: int = 0
    error: BaseException | None = None


@contextlib.contextmanager
def serve_mirror(config: MirrorConfig, host: str = "127.0.0.1", port: int = 0) -> Iterator[MirrorHandle]:
    """Run a mirror in a background thread of this process; yields its handle (port 0: any free port)."""
    mirror = Mirror(config)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state = _Listening()

    async def start() -> None:
        # a short shutdown: drips and endless bodies must not hold the caller's exit
        runner = web.AppRunner(mirror.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        state.runner, state.port = runner, runner.addresses[0][1]

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as err:  # report bind errors to the caller
            state.error = err
            loop.close()
            started.set()
            return
        started.set()
        loop.run_forever()
        assert state.runner is not None
        loop.run_until_complete(state.runner.cleanup())
        loop.close()

    thread = threading.Thread(target=main, name="datakit-mirror", daemon=True)
    thread.start()
    started.wait()
    if state.error is not None:
        raise ConfigError(f"mirror cannot listen on {host}:{port}: {state.error}")
    try:
        yield MirrorHandle(f"http://{host}:{state.port}", mirror.stats, mirror)
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
