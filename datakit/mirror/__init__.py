"""A local HTTP server that serves a manifest's images: for the demo, the tests and the benchmarks.

``datakit assemble --mirror http://127.0.0.1:PORT`` keeps each URL's path and
swaps its scheme and host for the mirror's, so the mirror answers
``/<server>/<id>_<secret>.jpg`` for every row of a manifest. It serves either
files from a folder, or images generated on the fly from a seed, whose look
(colour palette, texture orientation and frequency, contrast) depends on the
row's label, so that a small net can learn the "styles" offline.

- ``faults``: deterministic fault placement (`fault_for`), the downloader's
  expected Kind per fault (`EXPECTED_REASON`), one handler per fault kind;
- ``styles``: the synthetic per-label images;
- ``server``: ``MirrorConfig`` (with ``validate`` / ``for_manifest``), the
  aiohttp application, ``serve_mirror`` (a background thread) and
  ``run_mirror`` (the foreground command);
- ``demo_manifest``: the generator of the bundled demo manifest.

Nothing in the downloader imports this package: the mirror's placeholder hash
reaches it through the demo recipe (``placeholder_sha1`` in manifests/demo.json).
"""

from __future__ import annotations

from datakit.mirror.faults import (EXPECTED_REASON, FAULT_KINDS, FAULTS, MIRROR_PLACEHOLDER_SHA1, PLACEHOLDER_PATH,
                                   fault, fault_for, placeholder_bytes)
from datakit.mirror.server import Mirror, MirrorConfig, MirrorHandle, MirrorStats, run_mirror, serve_mirror
from datakit.mirror.styles import DEMO_STYLES, Style, style_for_label, synthetic_image

__all__ = ["DEMO_STYLES", "EXPECTED_REASON", "FAULTS", "FAULT_KINDS", "MIRROR_PLACEHOLDER_SHA1", "PLACEHOLDER_PATH",
           "Mirror", "MirrorConfig", "MirrorHandle", "MirrorStats", "Style", "fault", "fault_for",
           "placeholder_bytes", "run_mirror", "serve_mirror", "style_for_label", "synthetic_image"]
