"""Getting the bytes: ``HttpFetcher`` turns a URL into a body or a ``FetchFailure`` with its ``Kind``.

The transport knows nothing about images or files. It enforces what can be
checked before or while the body arrives: the scheme, the status (mapped to a
Kind), the redirect count, the content type, Flickr's redirect to its "photo
unavailable" page, and a byte limit enforced while reading (an endless body
is cut off, not buffered). Another source (file://, s3://, signed URLs) is
another fetcher with the same two methods, ``supports(url)`` and ``get``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from urllib.parse import urlsplit

import aiohttp

from datakit.download.options import DownloadOptions
from datakit.download.outcome import Kind, status_kind

# aiohttp >= 3.10 names a redirect to ftp:, file:, ... with its own error class.
_NonHttpUrl = getattr(aiohttp, "NonHttpUrlClientError", aiohttp.InvalidURL)

_OK_CONTENT_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


class FetchFailure(Exception):
    """Ends an attempt with a failure kind; `retry_after` (seconds) overrides the backoff."""

    def __init__(self, kind: Kind, detail: str = "", retry_after: float | None = None):
        super().__init__(detail)
        self.kind, self.detail, self.retry_after = kind, detail, retry_after


def retry_after_seconds(value: str | None) -> float | None:
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


class HttpFetcher:
    """http:// and https:// over one aiohttp session per run."""

    schemes = ("http", "https")

    def __init__(self, options: DownloadOptions) -> None:
        self.options = options

    def supports(self, url: str) -> str | None:
        """None when this fetcher can get `url`, else why not (the detail of a bad_url outcome)."""
        scheme = urlsplit(url).scheme.lower()
        if scheme not in self.schemes:
            return f"scheme {scheme or '(none)'!r} is not http or https"
        return None

    def session(self) -> aiohttp.ClientSession:
        o = self.options
        connector = aiohttp.TCPConnector(limit=o.concurrency, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=o.timeout, sock_connect=o.connect_timeout, sock_read=o.read_timeout)
        return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True,
                                     headers={"User-Agent": o.user_agent})

    async def get(self, session: aiohttp.ClientSession, url: str) -> bytes:
        """The body of a 200 answer; raises FetchFailure for everything else."""
        o = self.options
        try:
            async with session.get(url, max_redirects=o.max_redirects) as resp:
                if resp.status != 200:
                    retry_after = None
                    if resp.status in (429, 503):
                        retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                    raise FetchFailure(status_kind(resp.status), f"HTTP {resp.status} {resp.reason or ''}".strip(),
                                       retry_after)
                if resp.history and "photo_unavailable" in resp.url.path:
                    raise FetchFailure(Kind.PLACEHOLDER, f"redirected to {resp.url}")
                ctype = resp.headers.get("Content-Type", "").lower()
                if ctype and not ctype.startswith(_OK_CONTENT_TYPES):
                    raise FetchFailure(Kind.NOT_IMAGE, f"content type {ctype.split(';')[0]}")
                if resp.content_length is not None and resp.content_length > o.max_bytes:
                    raise FetchFailure(Kind.TOO_LARGE, f"Content-Length {resp.content_length} > {o.max_bytes}")
                if resp.content_length is not None:  # aiohttp reads exactly this many bytes, no more
                    return await resp.read()
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > o.max_bytes:
                        resp.close()
                        raise FetchFailure(Kind.TOO_LARGE, f"body over {o.max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except FetchFailure:
            raise
        except aiohttp.TooManyRedirects:
            raise FetchFailure(Kind.TOO_MANY_REDIRECTS, f"more than {o.max_redirects} redirects") from None
        except (aiohttp.InvalidURL, _NonHttpUrl) as err:
            raise FetchFailure(Kind.BAD_URL, f"invalid URL or redirect target {err}") from None
        except (asyncio.TimeoutError, TimeoutError):
            raise FetchFailure(Kind.TIMEOUT, "no answer in time") from None
        except aiohttp.ClientPayloadError as err:
            raise FetchFailure(Kind.TRUNCATED, f"body cut short ({type(err).__name__})") from None
        except aiohttp.ClientResponseError as err:
            raise FetchFailure(Kind.CONNECTION, f"bad response ({err.message})") from None
        except (aiohttp.ClientError, OSError) as err:
            raise FetchFailure(Kind.CONNECTION, f"{type(err).__name__}: {err}"[:200]) from None
