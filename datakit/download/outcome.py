"""What a download is and how it ended: ``FetchJob``, the ``Kind`` of an outcome, ``Outcome`` and ``Stats``.

Plain data only (no aiohttp, no OpenCV), so that partitions of jobs and their
results pickle cheaply between processes or cluster workers, and so that the
planner and the report can use them without loading the network stack.

Every way a download can end is a member of ``Kind``. Members are strings
(``Kind.HTTP_404 == "http_404"``), which is what ``failed.csv`` and the JSON
report hold, so files written before the enum read back unchanged.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


class Kind(str, enum.Enum):
    """How one download ended: ``OK`` or the reason it failed."""

    __str__ = str.__str__          # "http_404", not "Kind.HTTP_404", in messages and CSV files

    def __format__(self, spec: str) -> str:  # f"{kind}" as str(kind), not Enum's "Kind.HTTP_404"
        return str.__format__(self, spec)

    OK = "ok"
    # the network and the server
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    TRUNCATED = "truncated"
    HTTP_404 = "http_404"
    HTTP_410 = "http_410"
    HTTP_429 = "http_429"
    HTTP_4XX = "http_4xx"
    HTTP_500 = "http_500"
    HTTP_502 = "http_502"
    HTTP_503 = "http_503"
    HTTP_504 = "http_504"
    HTTP_5XX = "http_5xx"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    BAD_URL = "bad_url"
    # the bytes
    NOT_IMAGE = "not_image"
    PLACEHOLDER = "placeholder"
    UNDECODABLE = "undecodable"
    TOO_LARGE = "too_large"
    TOO_MANY_PIXELS = "too_many_pixels"
    # the planner, before any request
    BAD_NAME = "bad_name"
    DUPLICATE_NAME = "duplicate_name"

    @property
    def permanent(self) -> bool:
        """A retry will not fix it: a re-run does not ask again unless --retry-failed."""
        return self in PERMANENT_KINDS

    @property
    def transient(self) -> bool:
        """Worth another attempt within the same run (with backoff)."""
        return self in TRANSIENT_KINDS


PERMANENT_KINDS: frozenset[Kind] = frozenset({
    Kind.HTTP_404, Kind.HTTP_410, Kind.HTTP_4XX, Kind.PLACEHOLDER, Kind.NOT_IMAGE, Kind.UNDECODABLE,
    Kind.TOO_LARGE, Kind.TOO_MANY_PIXELS, Kind.BAD_URL, Kind.BAD_NAME, Kind.DUPLICATE_NAME,
    Kind.TOO_MANY_REDIRECTS,
})
TRANSIENT_KINDS: frozenset[Kind] = frozenset({
    Kind.TIMEOUT, Kind.CONNECTION, Kind.TRUNCATED, Kind.HTTP_429,
    Kind.HTTP_500, Kind.HTTP_502, Kind.HTTP_503, Kind.HTTP_504, Kind.HTTP_5XX,
})


def status_kind(status: int) -> Kind:
    """The kind of an HTTP status other than 200 (408 is a timeout; 5xx keep their number when common)."""
    if status == 408:
        return Kind.TIMEOUT
    if status in (404, 410, 429, 500, 502, 503, 504):
        return Kind(f"http_{status}")
    return Kind.HTTP_5XX if status >= 500 else Kind.HTTP_4XX


@dataclass(frozen=True)
class FetchJob:
    """One image to fetch: its key (the manifest row), where from, where to, and its partition."""

    key: int
    url: str
    dest: Path
    partition: int = 0


Job = FetchJob  # the name the downloader's API has always used


@dataclass
class Outcome:
    """How one job ended: a Kind, a short detail and the attempts used."""

    job: FetchJob
    kind: Kind
    detail: str = ""
    attempts: int = 0
    nbytes: int = 0
    waited: float = 0.0  # seconds spent in backoff / Retry-After before the last attempt

    @property
    def ok(self) -> bool:
        return self.kind == Kind.OK


@dataclass
class Stats:
    """Counts for a set of jobs; partitions' stats merge into a run's."""

    kinds: Counter = field(default_factory=Counter)
    attempts: int = 0
    nbytes: int = 0

    @property
    def ok(self) -> int:
        return self.kinds[Kind.OK]

    @property
    def failed(self) -> int:
        return sum(v for k, v in self.kinds.items() if k != Kind.OK)

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
                "failures": {str(k): v for k, v in sorted(self.kinds.items()) if k != Kind.OK}}
