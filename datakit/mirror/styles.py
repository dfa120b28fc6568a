"""The mirror's synthetic images: each label a "style" (palette, texture, contrast) a small net can learn.

Every parameter of a style is jittered by a hash of the path, so no two
images are alike, but the label stays learnable and the same path always
gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from datakit.mirror.faults import unit_hash


@dataclass(frozen=True)
class Style:
    """How a label looks: palette (HSV, OpenCV ranges), texture and contrast."""

    hue: float          # 0..180
    hue_spread: float
    saturation: float   # 0..255
    value: float        # 0..255
    contrast: float     # amplitude of the texture in value units
    orientation: float  # degrees
    frequency: float    # cycles across the image
    blur: float         # Gaussian sigma in pixels (0: none)
    noise: float        # per-pixel noise sigma


# The demo's five styles (manifests/demo.csv.gz labels 0..4), loosely after their Flickr names.
DEMO_STYLES: tuple[Style, ...] = (
    Style(hue=160, hue_spread=25, saturation=60, value=215, contrast=25, orientation=0, frequency=1.5,
          blur=2.0, noise=4),    # Pastel: light, washed-out pinks/blues, soft waves
    Style(hue=0, hue_spread=0, saturation=0, value=70, contrast=90, orientation=45, frequency=6,
          blur=0, noise=10),     # Noir: gray, dark, hard diagonal stripes
    Style(hue=20, hue_spread=8, saturation=200, value=200, contrast=50, orientation=90, frequency=2,
          blur=0, noise=6),      # Sunny: warm orange/yellow, horizontal bands
    Style(hue=105, hue_spread=10, saturation=40, value=150, contrast=12, orientation=135, frequency=3,
          blur=4.0, noise=3),    # Hazy: low-contrast gray-blue, blurred
    Style(hue=60, hue_spread=90, saturation=180, value=150, contrast=80, orientation=20, frequency=14,
          blur=0, noise=12),     # Texture: any hue, fine high-frequency grating
)


def style_for_label(label: int) -> Style:
    """The demo styles for labels 0..4, then a deterministic spread of palettes and textures."""
    if 0 <= label < len(DEMO_STYLES):
        return DEMO_STYLES[label]
    g = (label * 0.6180339887) % 1.0
    return Style(hue=180 * g, hue_spread=10, saturation=80 + 150 * ((label * 0.37) % 1), value=90 + 130 * ((label * 0.53) % 1),
                 contrast=20 + 60 * ((label * 0.71) % 1), orientation=(label * 37) % 180,
                 frequency=1.5 + (label * 7) % 12, blur=(label % 3), noise=6)


@lru_cache(maxsize=4096)
def synthetic_image(path: str, label: int, seed: int = 0, *, quality: int = 90) -> bytes:
    """The JPEG the mirror serves for `path`: the label's style plus per-image variation.

    Sizes vary between 112-160 x 96-128 pixels, like small web photos; every
    parameter of the style is jittered by the path's hash, and noise is added,
    so no two images are alike but the label stays learnable.
    """
    st = style_for_label(label)
    rng = np.random.RandomState(int(unit_hash(seed, path, "image") * 2**32))
    w, h = int(rng.randint(112, 161)), int(rng.randint(96, 129))
    theta = np.deg2rad(st.orientation + rng.normal(0, 8))
    freq = st.frequency * (1 + 0.15 * rng.normal())
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * np.cos(theta) + yy * np.sin(theta)) / max(w, h)
    wave = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    blob = np.sin(2 * np.pi * (xx / w * rng.uniform(0.3, 1.2) + yy / h * rng.uniform(0.3, 1.2))
                  + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    hue = (st.hue + rng.uniform(-st.hue_spread, st.hue_spread) + 6 * blob) % 180
    sat = np.clip(st.saturation + rng.normal(0, 15) + 20 * blob, 0, 255)
    val = st.value + rng.normal(0, 12) + st.contrast * wave + 15 * blob
    val = val + rng.normal(0, st.noise, size=(h, w)).astype(np.float32)
    hsv = np.stack([np.broadcast_to(hue, (h, w)), np.broadcast_to(sat, (h, w)), np.clip(val, 0, 255)], axis=-1)
    img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    if st.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), st.blur)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()
