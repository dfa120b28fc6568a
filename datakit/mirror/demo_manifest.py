"""The bundled demo manifest (manifests/demo.csv.gz): Flickr-like URLs for five styles, generated deterministically.

It lives beside the mirror, which serves an image for each of its URLs; the
manifest reader knows nothing about it. ``write_demo_manifest`` rebuilds the
bundled file byte for byte (its sha256 is pinned in manifests/demo.json).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os

import numpy as np

from datakit.atomic import atomic_write

DEMO_LABELS = ["Pastel", "Noir", "Sunny", "Hazy", "Texture"]


def demo_manifest_csv(rows: int = 3000, *, seed: int = 1701, test_fraction: float = 0.2) -> str:
    """The text of the demo manifest: same columns as Flickr Style, fake staticflickr URLs.

    The URLs never resolve on the internet; ``datakit mirror`` serves an image
    for each of them (its look depends on the label), so the demo runs offline.
    """
    rng = np.random.RandomState(seed)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["", "image_url", "page_url", "label", "_split"])
    # distinct 11-digit ids like Flickr's: a random start plus strictly positive random gaps, then shuffled
    photo_ids = 10**10 + np.cumsum(rng.randint(1, 10**6, size=rows).astype(np.int64))
    rng.shuffle(photo_ids)
    for i in range(rows):
        pid = int(photo_ids[i])
        farm = int(rng.randint(1, 10))
        server = int(rng.randint(1000, 9999))
        secret = "".join(rng.choice(list("0123456789abcdef"), size=10))
        label = i * len(DEMO_LABELS) // rows  # grouped by label, like Flickr Style's CSV
        split = "test" if rng.random_sample() < test_fraction else "train"
        owner = f"{int(rng.randint(10**7, 10**8))}@N0{int(rng.randint(0, 9))}"
        w.writerow([pid, f"http://farm{farm}.staticflickr.com/{server}/{pid}_{secret}.jpg",
                    f"http://www.flickr.com/photos/{owner}/{pid}", label, split])
    return out.getvalue()


def write_demo_manifest(path: str | os.PathLike, rows: int = 3000, *, seed: int = 1701) -> str:
    """Write the demo manifest gzipped with a zero timestamp (byte-stable); returns its sha256."""
    data = gzip.compress(demo_manifest_csv(rows, seed=seed).encode(), compresslevel=9, mtime=0)
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return hashlib.sha256(data).hexdigest()
