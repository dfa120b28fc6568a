"""Download one published file: resumable, verified, atomic (``datakit fetch-model`` / ``fetch-mean``).

A download goes to ``DEST.part`` beside its destination. Every attempt asks for the bytes
not yet there (HTTP ``Range: bytes=N-``): a cut connection, a Ctrl-C or a machine that
went offline loses nothing, and the next attempt (or the next run) continues. A server
that ignores ranges (200 instead of 206) is followed by starting over. Once complete,
the sha1 is checked (when the recipe has one) and only then is ``.part`` renamed to the
destination, so a destination file is always whole and verified. A destination already
there is verified instead of downloaded again, which is also how to use a file copied
from another machine when this one is offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from datakit.atomic import file_digest
from datakit.errors import DownloadError

CHUNK = 1 << 16


@dataclass
class FetchOptions:
    retries: int = 5                 # attempts after the first, each resuming where the last stopped
    backoff: float = 0.5             # seconds before the first retry, doubled each time
    connect_timeout: float = 20.0
    read_timeout: float = 60.0
    progress: bool | None = None     # None: a bar on a terminal only
    stream: IO[str] | None = None    # where the bar and notes go (stderr by default)


def mirror_url(url: str, mirror: str | None) -> str:
    """The published ``url``, or the same file name under ``mirror`` (``--mirror http://host:port/dir``)."""
    if not mirror:
        return url
    return mirror.rstrip("/") + "/" + Path(urlsplit(url).path).name


def sha1_of(path: Path) -> str:
    """The SHA-1 Caffe's model zoo publishes for a file (datakit.atomic.file_digest)."""
    return file_digest(path, "sha1")


def _finish(part: Path, dest: Path) -> None:
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)


def _offline_hint(url: str, dest: Path, sha1: str | None) -> str:
    check = f" (sha1 {sha1})" if sha1 else ""
    return (f"; offline? download {url} on a machine with network, copy it to {dest}{check} and run this "
            "command again to verify it, or point --mirror at a server that has it")


def _reason(err: Exception, url: str) -> str:
    """A failed attempt in a few words (a connection error names the host and the system's reason)."""
    import aiohttp
    if isinstance(err, aiohttp.ClientConnectorError):
        return f"cannot connect to {urlsplit(url).netloc} ({err.os_error.strerror if err.os_error else err})"
    return str(err) or type(err).__name__


async def _attempt(session, url: str, part: Path, bar) -> bool:
    """One GET from where ``part`` ends; True when the file is complete."""
    import aiohttp
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    async with session.get(url, headers=headers) as resp:
        if resp.status == 416 and have:     # nothing left to send: the part is whole (verified next)
            return True
        if resp.status == 404:
            raise DownloadError(f"{url}: not found (HTTP 404)")
        if resp.status >= 400:
            raise aiohttp.ClientResponseError(resp.request_info, resp.history, status=resp.status,
                                              message=resp.reason or "")
        if have and resp.status != 206:     # the server ignored the range: start over
            have = 0
        total = resp.content_length + have if resp.content_length is not None else None
        if bar is not None:
            bar.reset(total=total)
            bar.update(have)
        with open(part, "ab" if have else "wb") as f:
            async for block in resp.content.iter_chunked(CHUNK):
                f.write(block)
                if bar is not None:
                    bar.update(len(block))
        size = part.stat().st_size
        if total is not None and size < total:
            raise aiohttp.ClientPayloadError(f"connection closed after {size} of {total} bytes")
        return True


async def fetch_file(url: str, dest: str | os.PathLike, *, sha1: str | None = None,
                     options: FetchOptions | None = None) -> tuple[Path, str]:
    """Make ``dest`` a verified copy of ``url``; returns (dest, what happened: 'present' or 'downloaded')."""
    import aiohttp
    o = options or FetchOptions()
    stream = o.stream if o.stream is not None else sys.stderr
    dest = Path(dest)
    if dest.is_file():
        if sha1 is None or sha1_of(dest) == sha1:
            return dest, "present"
        print(f"{dest}: sha1 {sha1_of(dest)} is not the published {sha1}; downloading it again", file=stream)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    show = o.progress if o.progress is not None else bool(getattr(stream, "isatty", lambda: False)())
    bar = None
    if show:
        from tqdm import tqdm
        bar = tqdm(desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024, file=stream, leave=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=o.connect_timeout, sock_read=o.read_timeout)
    last: Exception | None = None
    try:
        async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": "datakit-fetch"},
                                         auto_decompress=False) as session:
            for attempt in range(o.retries + 1):
                try:
                    if await _attempt(session, url, part, bar):
                        last = None
                        break
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as err:
                    last = err
                    if isinstance(err, aiohttp.ClientResponseError) and 400 <= err.status < 500 \
                            and err.status not in (408, 429):
                        break
                    if attempt < o.retries:
                        if attempt == 0:  # the retries wait o.backoff·(2^retries - 1) s in all: say so
                            print(f"{urlsplit(url).netloc}: {_reason(err, url)}; trying {o.retries} more "
                                  f"time(s) over {o.backoff * (2 ** o.retries - 1):.0f} s (Ctrl-C stops)",
                                  file=stream, flush=True)
                        await asyncio.sleep(o.backoff * 2 ** attempt)
    finally:
        if bar is not None:
            bar.close()
    if last is not None:
        kept = f"; {part.stat().st_size:,} bytes kept in {part}, the next run resumes" if part.exists() and \
            part.stat().st_size else ""
        raise DownloadError(f"{url}: download failed after {o.retries + 1} attempt(s): {_reason(last, url)}{kept}"
                            + _offline_hint(url, dest, sha1))
    if sha1 is not None:
        got = sha1_of(part)
        if got != sha1:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
            raise DownloadError(f"{url}: sha1 {got} is not the published {sha1}: the file is corrupt or the "
                                "server sends another one; removed, run again to download it afresh")
    _finish(part, dest)
    return dest, "downloaded"


def fetch(url: str, dest: str | os.PathLike, *, sha1: str | None = None,
          options: FetchOptions | None = None) -> tuple[Path, str]:
    """:func:`fetch_file` for synchronous callers (the CLI)."""
    return asyncio.run(fetch_file(url, dest, sha1=sha1, options=options))
