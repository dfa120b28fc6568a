"""``DownloadOptions``: the network limits, retry policy and validation limits of one download run."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from datakit import __version__
from datakit.errors import ConfigError
from datakit.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

# Flickr answers a missing photo with this image (Caffe's MISSING_IMAGE_SHA1). Other hosts' placeholders
# come from their recipe (``placeholder_sha1`` in manifests/NAME.json).
FLICKR_PLACEHOLDER_SHA1 = "6a92790b1c2a301c6e7ddef645dca1f53ea97ac2"


@dataclass
class DownloadOptions:
    """Network limits, retry policy and validation limits of one download run (plain data: it pickles)."""

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
    placeholder_sha1: frozenset[str] = frozenset({FLICKR_PLACEHOLDER_SHA1})
    workers: int = 0                 # validation threads (0 or less: CPU count + 2)
    fsync: bool = False              # fsync each image (only power loss needs it; rename already protects kills)
    user_agent: str = f"datakit/{__version__} (+https://github.com/BVLC/caffe examples/finetune_flickr_style)"

    def validate(self) -> DownloadOptions:
        """Refuse limits that cannot work, with the option's name; returns self so calls can chain."""
        for name in ("concurrency", "retries", "max_bytes", "max_pixels"):
            value = getattr(self, name)
            if value < (0 if name == "retries" else 1):
                raise ConfigError(f"--{name.replace('_', '-')} {value}: must be positive")
        for name in ("timeout", "connect_timeout", "read_timeout", "backoff", "backoff_max", "retry_after_max"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name):g}: must be 0 or more seconds")
        if self.resize_mode not in ("shorter", "longer"):
            raise ConfigError(f"--resize-mode {self.resize_mode!r}: expected 'shorter' or 'longer'")
        return self

    def with_placeholders(self, hashes: Iterable[str]) -> DownloadOptions:
        """A copy that also refuses these placeholder sha1s (the caller's options are left as they are)."""
        extra = frozenset(str(h).lower() for h in hashes)
        if extra <= self.placeholder_sha1:
            return self
        return dataclasses.replace(self, placeholder_sha1=frozenset(self.placeholder_sha1) | extra)

    def share(self, parts: int) -> DownloadOptions:
        """The options for one of `parts` partitions running at once, so the bounds still hold in all.

        ``concurrency`` and ``per_host`` are limits for the whole run; when an
        executor runs several partitions at the same time each gets its share
        (rounded up, at least 1), as do the validation threads.
        """
        if parts <= 1:
            return self
        def each(n: int) -> int:
            return max(1, -(-n // parts))
        return dataclasses.replace(self, concurrency=each(self.concurrency),
                                   per_host=each(self.per_host) if self.per_host > 0 else 0,
                                   workers=each(self.workers) if self.workers > 0 else 0)
