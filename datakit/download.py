"""The async image downloader: many connections on one event loop, validation in a thread pool.

Caffe's ``assemble_data.py`` runs one blocking ``urlretrieve`` per process,
so it downloads as many images at once as the machine has cores, while the
cores sit idle waiting on the network. Here one event loop keeps
`concurrency` requests in flight (bounded per host too), and the CPU work,
checking that the bytes are a real image, resizing, writing, runs in a thread
pool (OpenCV releases the GIL) so the network never waits on it.

Every response is checked before anything is written: scheme, status,
redirect count, content type, a byte limit enforced while reading,
Flickr's "photo unavailable" placeholder, a pixel limit read from the header
(decompression bombs) and a full OpenCV decode. Each failure gets a short
*kind* ("http_404", "timeout", "placeholder", ...) that the report counts.

Transient failures (connection errors, timeouts, truncated bodies, 5xx, 429)
are retried with exponential backoff and jitter, 429 honouring Retry-After;
404 and 410 are never retried. Files are written under a temporary name and
renamed, so a killed run leaves no half-written image under its final name.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import itertools
import os
import random
import time
from collections import Counter
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import aiohttp

from datakit import __version__
from datakit.errors import ImageError
from datakit.images import (DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_image, encode_image,
                            resize_keep_aspect, sniff_format)
from datakit.mirror import MIRROR_PLACEHOLDER_SHA1

# Flickr answers a missing photo with this image (Caffe's MISSING_IMAGE_SHA1).
FLICKR_PLACEHOLDER_SHA1 = "6a92790b1c2a301c6e7ddef645dca1f53ea97ac2"

# Kinds that a retry will not fix: a re-run does not ask again unless --retry-failed.
PERMANENT_KINDS = frozenset({
    "http_404", "http_410", "http_4xx", "placeholder", "not_image", "undecodable", "too_large",
    "too_many_pixels", "bad_url", "bad_name", "duplicate_name", "too_many_redirects",
})
# Kinds worth another attempt within the same run.
TRANSIENT_KINDS = frozenset({"timeout", "connection", "truncated", "http_5xx", "http_429"})

# aiohttp >= 3.10 names a redirect to ftp:, file:, ... with its own error class.
_NonHttpUrl = getattr(aiohttp, "NonHttpUrlClientError", aiohttp.InvalidURL)

_OK_CONTENT_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


@dataclass
class DownloadOptions:
    """Network limits, retry policy and validation limits of one download run."""

    concurrency: int = 64            # requests in flight in all: sized for the network, not the CPU
    per_host: int = 32               # requests in flight to any one host (0: no per-host limit)
    timeout: float = 60.0            # whole attempt, connect to last byte
    connect_timeout: float = 15.0
    read_timeout: float = 20.0       # longest wait for the next bytes of a body
    retries: int = 3                 # extra attempts for transient failures
    backoff: float = 0.5             # first backoff delay in seconds, doubled each retry
    backoff_max: float = 30.0
    retry_after_max: float = 120.0   # longest Retry-After honoured
    max_redirects: int = 5
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    resize: int = 0                  # 0: store the bytes as downloaded
    resize_mode: str = "shorter"     # 'shorter' side or 'longer' side becomes `resize`
    placeholder_sha1: frozenset[str] = frozenset({FLICKR_PLACEHOLDER_SHA1, MIRROR_PLACEHOLDER_SHA1})
    workers: int = 0                 # validation threads (0: CPU count)
    fsync: bool = False              # fsync each image (only power loss needs it; rename already protects kills)
    user_agent: str = f"datakit/{__version__} (+https://github.com/BVLC/caffe examples/finetune_flickr_style)"


@dataclass(frozen=True)
class Job:
    """One image to fetch: where from, where to, and which partition it belongs to."""

    key: int
    url: str
    dest: Path
    partition: int = 0


@dataclass
class Outcome:
    """How one job ended: 'ok' or a failure kind, with a short detail and the attempts used."""

    job: Job
    kind: str
    detail: str = ""
    attempts: int = 0
    nbytes: int = 0
    waited: float = 0.0  # seconds spent in backoff / Retry-After before the last attempt

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


@dataclass
class Stats:
    """Counts for a set of jobs; partitions' stats merge into a run's."""

    kinds: Counter = field(default_factory=Counter)
    attempts: int = 0
    nbytes: int = 0

    @property
    def ok(self) -> int:
        return self.kinds["ok"]

    @property
    def failed(self) -> int:
        return sum(v for k, v in self.kinds.items() if k != "ok")

    def add(self, outcome: Outcome) -> None:
        self.kinds[outcome.kind] += 1
        self.attempts += outcome.attempts
        self.nbytes += outcome.nbytes

    def merge(self, other: Stats) -> None:
        self.kinds.update(other.kinds)
        self.attempts += other.attempts
        self.nbytes += other.nbytes

    def as_dict(self) -> dict:
        return {"ok": self.ok, "failed": self.failed, "attempts": self.attempts, "bytes": self.nbytes,
                "failures": {k: v for k, v in sorted(self.kinds.items()) if k != "ok"}}


class _Failure(Exception):
    """Internal: ends an attempt with a failure kind; `retry_after` overrides the backoff."""

    def __init__(self, kind: str, detail: str = "", retry_after: float | None = None):
        super().__init__(detail)
        self.kind, self.detail, self.retry_after = kind, detail, retry_after


def _status_kind(status: int) -> str:
    if status == 408:
        return "timeout"
    if status in (404, 410, 429):
        return f"http_{status}"
    if status >= 500:
        return "http_5xx" if status not in (500, 502, 503, 504) else f"http_{status}"
    return "http_4xx"


def _is_transient(kind: str) -> bool:
    return kind in TRANSIENT_KINDS or kind.startswith("http_5")


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


_TEMP_NUMBERS = itertools.count()


def write_image(dest: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write `data` to `dest` through a temporary name in the same folder, then rename it into place.

    The same promise as datakit.atomic.write_bytes_atomic (a killed run never
    leaves a partial file under the final name; temporaries are
    ``.NAME.*.part``, removed by the next run) in the fewest system calls:
    this runs for every downloaded image, and mkstemp's random names, the
    folder check, a buffered file object and a chmod cost more CPU per small
    image than decoding it. The file gets the mode open() gives (0o666 less
    the umask), as a plainly written file would.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = dest.parent / f".{dest.name}.{os.getpid()}-{next(_TEMP_NUMBERS)}.part"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # left by a killed run with the same pid: take the next number
            continue
        except FileNotFoundError:
            dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def validate_image(data: bytes, dest: Path, options: DownloadOptions) -> tuple[str, str]:
    """Check downloaded bytes and write them to `dest` atomically; returns (kind, detail).

    Runs in a worker thread. Order matters: cheap checks first (size, the
    placeholder's hash, the header's pixel count) so that a bomb is refused
    before OpenCV allocates anything.
    """
    if len(data) > options.max_bytes:
        return "too_large", f"{len(data)} bytes > {options.max_bytes}"
    if not data:
        return "undecodable", "empty body"
    if hashlib.sha1(data).hexdigest() in options.placeholder_sha1:
        return "placeholder", "the host's 'photo unavailable' image"
    if sniff_format(data) is None:
        return "undecodable", "not a known image format"
    try:  # decode_image reads the header first and refuses too many pixels before OpenCV allocates
        img = decode_image(data, color=True, max_pixels=options.max_pixels)
    except ImageError as err:
        kind = "too_many_pixels" if "more than the limit" in str(err) else "undecodable"
        return kind, str(err)
    if options.resize > 0:
        kw = {"shorter_side": options.resize} if options.resize_mode == "shorter" else {"longer_side": options.resize}
        small = resize_keep_aspect(img, **kw)
        if small is not img:
            ext = "png" if dest.suffix.lower() == ".png" else "jpg"
            data = encode_image(small, ext)
    write_image(dest, data, fsync=options.fsync)
    return "ok", ""


class Downloader:
    """Runs jobs on one aiohttp session; `run` streams outcomes to a callback."""

    def __init__(self, options: DownloadOptions | None = None, executor: Executor | None = None):
        self.options = options or DownloadOptions()
        self._executor = executor
        self._rng = random.Random()
        self._hosts: dict[str, asyncio.Semaphore] = {}

    def _host_slot(self, url: str) -> asyncio.Semaphore | contextlib.nullcontext:
        """The per-host bound, held only while a request is on the wire (not during backoff or decoding).

        Kept here rather than in aiohttp's connector so that waiting for a
        busy host does not eat into the request's own timeout.
        """
        if self.options.per_host <= 0:
            return contextlib.nullcontext()
        host = urlsplit(url).netloc.lower()
        slot = self._hosts.get(host)
        if slot is None:
            slot = self._hosts[host] = asyncio.Semaphore(self.options.per_host)
        return slot

    def _backoff(self, attempt: int) -> float:
        o = self.options
        return min(o.backoff_max, o.backoff * 2 ** attempt) * self._rng.uniform(0.5, 1.5)

    async def fetch(self, session: aiohttp.ClientSession, job: Job) -> Outcome:
        """Download, validate and store one job, retrying transient failures."""
        o = self.options
        scheme = urlsplit(job.url).scheme.lower()
        if scheme not in ("http", "https"):
            return Outcome(job, "bad_url", f"scheme {scheme or '(none)'!r} is not http or https", 0)
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            try:
                async with self._host_slot(job.url):
                    data = await self._get(session, job.url)
                loop = asyncio.get_running_loop()
                kind, detail = await loop.run_in_executor(self._executor, validate_image, data, job.dest, o)
                return Outcome(job, kind, detail, attempt, len(data) if kind == "ok" else 0, waited)
            except _Failure as fail:
                if not _is_transient(fail.kind) or attempt > o.retries:
                    return Outcome(job, fail.kind, fail.detail, attempt, 0, waited)
                delay = fail.retry_after if fail.retry_after is not None else self._backoff(attempt - 1)
                delay = min(delay, o.retry_after_max)
                waited += delay
                await asyncio.sleep(delay)

    async def _get(self, session: aiohttp.ClientSession, url: str) -> bytes:
        o = self.options
        try:
            async with session.get(url, max_redirects=o.max_redirects) as resp:
                if resp.status != 200:
                    retry_after = None
                    if resp.status in (429, 503):
                        retry_after = _retry_after_seconds(resp.headers.get("Retry-After"))
                    raise _Failure(_status_kind(resp.status), f"HTTP {resp.status} {resp.reason or ''}".strip(),
                                   retry_after)
                if resp.history and "photo_unavailable" in resp.url.path:
                    raise _Failure("placeholder", f"redirected to {resp.url}")
                ctype = resp.headers.get("Content-Type", "").lower()
                if ctype and not ctype.startswith(_OK_CONTENT_TYPES):
                    raise _Failure("not_image", f"content type {ctype.split(';')[0]}")
                if resp.content_length is not None and resp.content_length > o.max_bytes:
                    raise _Failure("too_large", f"Content-Length {resp.content_length} > {o.max_bytes}")
                if resp.content_length is not None:  # aiohttp reads exactly this many bytes, no more
                    return await resp.read()
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > o.max_bytes:
                        resp.close()
                        raise _Failure("too_large", f"body over {o.max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except _Failure:
            raise
        except aiohttp.TooManyRedirects:
            raise _Failure("too_many_redirects", f"more than {o.max_redirects} redirects") from None
        except (aiohttp.InvalidURL, _NonHttpUrl) as err:
            raise _Failure("bad_url", f"invalid URL or redirect target {err}") from None
        except (asyncio.TimeoutError, TimeoutError):
            raise _Failure("timeout", "no answer in time") from None
        except aiohttp.ClientPayloadError as err:
            raise _Failure("truncated", f"body cut short ({type(err).__name__})") from None
        except aiohttp.ClientResponseError as err:
            raise _Failure("connection", f"bad response ({err.message})") from None
        except (aiohttp.ClientError, OSError) as err:
            raise _Failure("connection", f"{type(err).__name__}: {err}"[:200]) from None

    def session(self) -> aiohttp.ClientSession:
        o = self.options
        connector = aiohttp.TCPConnector(limit=o.concurrency, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=o.timeout, sock_connect=o.connect_timeout, sock_read=o.read_timeout)
        return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True,
                                     headers={"User-Agent": o.user_agent})

    async def run(self, jobs: Iterable[Job], on_outcome: Callable[[Outcome], bool | None] | None = None,
                  stop: asyncio.Event | None = None) -> Stats:
        """Fetch every job with at most `concurrency` in flight; returns their stats.

        `on_outcome` is called on the loop for each finished job; returning
        True stops the run (no new jobs start, running ones are cancelled), as
        does setting `stop`. Jobs are pulled lazily through a bounded queue.
        """
        stop = stop or asyncio.Event()
        stats = Stats()
        queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=2 * self.options.concurrency)
        own_executor = self._executor is None
        if own_executor:
            threads = self.options.workers if self.options.workers > 0 else (os.cpu_count() or 2) + 2
            self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="datakit-validate")
        n_workers = max(1, self.options.concurrency)

        async def produce() -> None:
            for job in jobs:
                if stop.is_set():
                    break
                await queue.put(job)
            for _ in range(n_workers):
                await queue.put(None)

        async def work(session: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                job = await queue.get()
                if job is None:
                    return
                outcome = await self.fetch(session, job)
                stats.add(outcome)
                if on_outcome is not None and on_outcome(outcome):
                    stop.set()

        try:
            async with self.session() as session:
                tasks = [asyncio.ensure_future(produce())]
                tasks += [asyncio.ensure_future(work(session)) for _ in range(n_workers)]
                waiter = asyncio.ensure_future(stop.wait())
                done = asyncio.ensure_future(asyncio.gather(*tasks[1:]))
                await asyncio.wait([waiter, done], return_when=asyncio.FIRST_COMPLETED)
                for t in tasks + [waiter, done]:
                    t.cancel()
                await asyncio.gather(*tasks, waiter, done, return_exceptions=True)
        finally:
            if own_executor:
                self._executor.shutdown(wait=True)
                self._executor = None
        return stats


def download_partition(jobs: Iterable[Job], options: DownloadOptions | None = None) -> tuple[Stats, list[Outcome]]:
    """Download one partition's jobs on a fresh event loop: the unit a distributed runner would call.

    Returns the partition's stats and its failures (successful files are on
    disk under each job's `dest`).
    """
    failures: list[Outcome] = []

    def keep(outcome: Outcome) -> None:
        if not outcome.ok:
            failures.append(outcome)

    stats = asyncio.run(Downloader(options).run(jobs, keep))
    return stats, failures
