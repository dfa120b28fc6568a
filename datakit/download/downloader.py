"""``Downloader``: many connections on one event loop; fetch -> validate -> store for every job.

Caffe's ``assemble_data.py`` runs one blocking ``urlretrieve`` per process,
so it downloads as many images at once as the machine has cores, while the
cores sit idle waiting on the network. Here one event loop keeps
`concurrency` requests in flight (bounded per host too), and the CPU work
(validating the bytes, resizing, writing) runs in a thread pool (OpenCV
releases the GIL) so the network never waits on it.

Transient failures (connection errors, timeouts, truncated bodies, 5xx, 429)
are retried with exponential backoff and jitter, 429 honouring Retry-After;
404 and 410 are never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any

import aiohttp

from datakit.download.fetch import FetchFailure, HttpFetcher
from datakit.download.options import DownloadOptions
from datakit.download.outcome import FetchJob, Kind, Outcome, Stats
from datakit.download.store import image_ext, write_image
from datakit.download.validate import check_image
from datakit.errors import DownloadError


def validate_image(data: bytes, dest: Path, options: DownloadOptions) -> tuple[Kind, str]:
    """Check downloaded bytes and, when they pass, store them at `dest`; returns (kind, detail).

    The composition of the two separate pieces (``check_image``, pure, and
    ``write_image``) that the downloader runs in one thread-pool call per
    response, so that a response costs one hop off the event loop.
    """
    verdict = check_image(data, options, image_ext(dest))
    if verdict.ok:
        try:
            write_image(dest, verdict.data, fsync=options.fsync)
        except OSError as err:  # the disk, not the image: the whole run must stop and say so
            raise DownloadError(f"{dest}: cannot write the image ({err.strerror or err}); the images already "
                                "written are kept: fix this and re-run the same command to resume") from None
    return verdict.kind, verdict.detail


class Downloader:
    """Runs jobs on one aiohttp session; `run` streams outcomes to a callback."""

    def __init__(self, options: DownloadOptions | None = None, executor: Executor | None = None):
        self.options = options or DownloadOptions()
        self.fetcher = HttpFetcher(self.options)
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

    async def fetch(self, session: aiohttp.ClientSession, job: FetchJob) -> Outcome:
        """Download, validate and store one job, retrying transient failures."""
        o = self.options
        refused = self.fetcher.supports(job.url)
        if refused:
            return Outcome(job, Kind.BAD_URL, refused, 0)
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            try:
                async with self._host_slot(job.url):
                    data = await self._get(session, job.url)
                loop = asyncio.get_running_loop()
                kind, detail = await loop.run_in_executor(self._executor, validate_image, data, job.dest, o)
                return Outcome(job, kind, detail, attempt, len(data) if kind == Kind.OK else 0, waited)
            except FetchFailure as fail:
                if not fail.kind.transient or attempt > o.retries:
                    return Outcome(job, fail.kind, fail.detail, attempt, 0, waited)
                delay = fail.retry_after if fail.retry_after is not None else self._backoff(attempt - 1)
                delay = min(delay, o.retry_after_max)
                waited += delay
                await asyncio.sleep(delay)

    async def _get(self, session: aiohttp.ClientSession, url: str) -> bytes:
        """One request through the fetcher (the hook a test wraps to watch the bounds)."""
        return await self.fetcher.get(session, url)

    def session(self) -> aiohttp.ClientSession:
        return self.fetcher.session()

    async def run(self, jobs: Iterable[FetchJob], on_outcome: Callable[[Outcome], bool | None] | None = None,
                  stop: asyncio.Event | None = None) -> Stats:
        """Fetch every job with at most `concurrency` in flight; returns their stats.

        `on_outcome` is called on the loop for each finished job; returning
        True stops the run (no new jobs start, running ones are cancelled), as
        does setting `stop`. Jobs are pulled lazily through a bounded queue.
        An exception in a job (a DownloadError for a file that cannot be
        written) stops the run and is raised once the others are cancelled.
        """
        stop = stop or asyncio.Event()
        stats = Stats()
        queue: asyncio.Queue[FetchJob | None] = asyncio.Queue(maxsize=2 * self.options.concurrency)
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
                waiter: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
                done: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*tasks[1:]))
                await asyncio.wait([waiter, done], return_when=asyncio.FIRST_COMPLETED)
                for t in tasks + [waiter, done]:
                    t.cancel()
                ended = await asyncio.gather(*tasks, waiter, done, return_exceptions=True)
            for err in ended:  # a worker that raised (a full disk, a bug) ends the run with its error
                if isinstance(err, BaseException) and not isinstance(err, asyncio.CancelledError):
                    raise err
        finally:
            if own_executor and self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
        return stats
