"""Benchmark images as Flickr serves them: the medium size (longest side 500 px, about 100 KB JPEG).

Made from the real photos in ``../shared/data/photos`` (``$DATAKIT_SHARED/data/photos``): each image a
random crop of one of them, scaled to 500 px on its longest side, maybe mirrored, with a small
brightness change and sensor-like noise so that no two are alike, encoded at quality 95. Deterministic
for a seed. Thumbnails would make decoding free and hide where the time goes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

PHOTOS = Path(os.environ.get("DATAKIT_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / "photos"


def flickr_medium_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n distinct JPEGs of Flickr's medium size from the real photos (SystemExit naming the folder if none)."""
    import cv2
    sources = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in sorted(PHOTOS.rglob("*.jpg"))]
    sources = [s for s in sources if s is not None and max(s.shape[:2]) >= 500 and min(s.shape[:2]) >= 200]
    if not sources:
        raise SystemExit(f"no photos of 500 px or more under {PHOTOS}: set DATAKIT_SHARED to the shared/ folder")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        f = rng.uniform(0.7, 1.0)
        ch, cw = int(h * f), int(w * f)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        s = 500 / max(ch, cw)
        img = cv2.resize(src[y:y + ch, x:x + cw], (max(1, round(cw * s)), max(1, round(ch * s))),
                         interpolation=cv2.INTER_AREA)
        if rng.integers(0, 2):
            img = img[:, ::-1]
        img = np.clip(img * rng.uniform(0.85, 1.15) + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        out.append(buf.tobytes())
    return out
