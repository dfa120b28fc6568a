"""The image downloader, in the pieces img2dataset splits it into: fetch, validate, store, over partitions.

- ``outcome``: ``FetchJob`` (a URL and where it goes), ``Kind`` (every way a
  download ends, an enum), ``Outcome`` and ``Stats``: plain data.
- ``options``: ``DownloadOptions`` (limits, retries, placeholder hashes) and
  its ``validate()``.
- ``fetch``: ``HttpFetcher``, the transport (scheme, status, redirects,
  content type, byte limit while reading), raising ``FetchFailure(kind)``.
- ``validate``: ``check_image``, pure, bytes -> ``Verdict`` (placeholder
  hash, header pixel limit before decoding, full decode, resize).
- ``store``: ``write_image``, atomic (temporary name, rename).
- ``downloader``: ``Downloader``, one event loop keeping `concurrency`
  requests in flight, retries with backoff; validation in a thread pool.
- ``partition``: ``run_partition(jobs, options) -> PartitionResult``, the
  picklable unit an executor runs.

Every response is checked before anything is written, and a killed run never
leaves a half-written image under its final name.

Importing this package is cheap: each name is loaded from its module on
first use (PEP 562), so planning and reporting code that needs only
``Kind`` or ``FetchJob`` does not load aiohttp or OpenCV.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Downloader": "downloader", "validate_image": "downloader",
    "FetchFailure": "fetch", "HttpFetcher": "fetch",
    "FLICKR_PLACEHOLDER_SHA1": "options", "DownloadOptions": "options",
    "PERMANENT_KINDS": "outcome", "TRANSIENT_KINDS": "outcome", "FetchJob": "outcome", "Job": "outcome",
    "Kind": "outcome", "Outcome": "outcome", "Stats": "outcome", "status_kind": "outcome",
    "PartitionResult": "partition", "download_partition": "partition", "run_partition": "partition",
    "write_image": "store",
    "Verdict": "validate", "check_image": "validate",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'datakit.download' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"datakit.download.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = sorted(_WHERE)
