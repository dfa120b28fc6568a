"""verify_image (the reduced-size JPEG decode the downloader validates with) refuses exactly what a full decode refuses."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datakit.download import DownloadOptions, Kind, check_image
from datakit.errors import ImageError, ImageTooLarge
from datakit.images import decode_image, verify_image


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A noisy smooth picture (a flat one compresses to almost no entropy-coded data)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(xx / (7 + c) + yy / (11 + 2 * c)) for c in range(3)], axis=-1)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def _jpegs() -> dict[str, bytes]:
    img = _photo(150, 200, 0)
    def enc(a: np.ndarray, *params: int) -> bytes:
        ok, buf = cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, 90, *params])
        assert ok
        return buf.tobytes()
    return {
        "baseline": enc(img),
        "progressive": enc(img, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        "gray": enc(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)),
        "restart_444": enc(img, cv2.IMWRITE_JPEG_RST_INTERVAL, 4, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                           cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
        "tiny": enc(img[:3, :5]),
        "flickr_medium": enc(_photo(375, 500, 1)),
    }


def _outcome(fn, data: bytes) -> tuple[str, str]:
    try:
        fn(data)
    except ImageError as err:
        return type(err).__name__, str(err)
    return "ok", ""


def _full(data: bytes) -> None:
    decode_image(data, color=True)


@pytest.mark.parametrize("name", list(_jpegs()))
def test_truncated_and_corrupted_jpegs_fail_as_a_full_decode_fails(name: str) -> None:
    data = _jpegs()[name]
    assert _outcome(verify_image, data) == ("ok", "")
    rng = np.random.default_rng(len(data))
    cuts = sorted(set(np.linspace(2, len(data) - 1, 40).astype(int)) | {len(data) - 2, len(data) - 1})
    variants = [data[:c] for c in cuts]
    for pos in rng.integers(2, len(data), 40):  # flipped bytes: headers, tables and entropy-coded data alike
        b = bytearray(data)
        b[pos] ^= int(rng.integers(1, 256))
        variants.append(bytes(b))
    for pos in rng.integers(2, len(data), 10):  # inserted garbage
        variants.append(data[:pos] + bytes(rng.integers(0, 256, 16, dtype=np.uint8)) + data[pos:])
    refused = 0
    for v in variants:
        full = _outcome(_full, v)
        assert _outcome(verify_image, v) == full, (name, len(v))
        refused += full[0] != "ok"
    assert refused >= len(cuts) - 1  # every truncation (all but possibly the lost EOI's last byte) is refused


def test_a_truncated_jpeg_is_still_rejected() -> None:
    data = _jpegs()["flickr_medium"]
    half = data[: len(data) // 2]
    assert cv2.imdecode(np.frombuffer(half, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8) is None
    with pytest.raises(ImageError, match="corrupt"):
        verify_image(half)
    verdict = check_image(half, DownloadOptions())
    assert verdict.kind == Kind.UNDECODABLE and verdict.detail == _outcome(_full, half)[1]


def test_limits_and_other_formats_match_decode_image() -> None:
    data = _jpegs()["flickr_medium"]
    with pytest.raises(ImageTooLarge) as err:
        verify_image(data, max_pixels=500 * 375 - 1)
    with pytest.raises(ImageTooLarge) as ref:
        decode_image(data, max_pixels=500 * 375 - 1)
    assert str(err.value) == str(ref.value)
    verify_image(data, max_pixels=500 * 375)
    with pytest.raises(ImageTooLarge):
        verify_image(data, max_bytes=len(data) - 1)
    png = cv2.imencode(".png", _photo(20, 30, 2))[1].tobytes()
    for v in (png, png[: len(png) // 2], b"", b"\xff\xd8\xff", b"GIF89a\x01\x00"):
        assert _outcome(verify_image, v) == _outcome(_full, v)


def test_check_image_without_resize_stores_the_downloaded_bytes() -> None:
    for data in _jpegs().values():
        verdict = check_image(data, DownloadOptions())
        assert verdict.kind == Kind.OK and verdict.data == data
    resized = check_image(_jpegs()["flickr_medium"], DownloadOptions(resize=100))
    assert resized.kind == Kind.OK and cv2.imdecode(np.frombuffer(resized.data, np.uint8), cv2.IMREAD_COLOR).shape == (100, 133, 3)
