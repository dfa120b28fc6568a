"""Decode, validate and resize images with OpenCV, as Caffe does.

Caffe's ``ReadImageToCVMat`` reads with ``cv::imread`` (BGR, or one channel
for gray) and resizes with ``cv::resize`` at its default INTER_LINEAR; the
functions here do the same so that our pixels equal Caffe's. They also guard
against hostile input that Caffe never had to face when it downloaded from the
web: decompression bombs (checked from the header before decoding), truncated
files and bodies that are not images at all.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from datakit.errors import ImageError, ImageTooLarge
from datakit.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "ImageHeader", "decode_image", "encode_image", "hwc_to_chw",
           "read_header", "read_image", "resize_exact", "resize_keep_aspect", "sniff_format", "verify_image"]


@dataclass(frozen=True)
class ImageHeader:
    """What the first bytes of a file say: its format and size, before decoding."""

    format: str
    width: int
    height: int


def sniff_format(data: bytes) -> str | None:
    """The image format from its magic bytes: 'jpeg', 'png', 'gif', 'bmp', 'webp', 'tiff' or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def read_header(data: bytes) -> ImageHeader | None:
    """Width and height from a JPEG, PNG, GIF or BMP header, without decoding pixels.

    Returns None when the format has no header we parse (the caller then
    checks the size after decoding) and raises ImageError when the header of a
    known format is cut short.
    """
    fmt = sniff_format(data)
    try:
        if fmt == "png":
            width, height = struct.unpack(">II", data[16:24])
            return ImageHeader(fmt, width, height)
        if fmt == "gif":
            width, height = struct.unpack("<HH", data[6:10])
            return ImageHeader(fmt, width, height)
        if fmt == "bmp":
            width, height = struct.unpack("<ii", data[18:26])
            return ImageHeader(fmt, abs(width), abs(height))
        if fmt == "jpeg":
            return _jpeg_header(data)
    except struct.error:
        raise ImageError(f"{fmt} header is truncated") from None
    return None


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_header(data: bytes) -> ImageHeader | None:
    """Walk JPEG segments to the first start-of-frame marker and read its size."""
    pos = 2
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return ImageHeader("jpeg", width, height)
        pos += 2 + length
    raise ImageError("jpeg header is truncated (no frame header found)")


def decode_image(data: bytes, *, color: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int | None = None) -> np.ndarray:
    """Decode image bytes to an H x W x C uint8 array (BGR, or C=1 for gray).

    `color=True` gives 3 channels whatever the file has (Caffe's is_color),
    `color=False` gives one. Raises ImageError when the bytes are too many, the
    header announces more than `max_pixels`, or OpenCV cannot decode them.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLarge(f"{len(data)} bytes is more than the limit of {max_bytes}", "bytes")
    if not data:
        raise ImageError("empty file")
    header = read_header(data)
    if header is not None and header.width * header.height > max_pixels:
        raise ImageTooLarge(f"{header.width}x{header.height} pixels is more than the limit of {max_pixels}")
    flag = cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if img is None or img.size == 0:
        kind = sniff_format(data)
        raise ImageError("cannot be decoded as an image" + (f" (looks like {kind}, but is corrupt)" if kind else ""))
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ImageTooLarge(f"{img.shape[1]}x{img.shape[0]} pixels is more than the limit of {max_pixels}")
    if img.ndim == 2:
        img = img[:, :, None]
    return img


def verify_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = None) -> None:
    """Raise exactly what ``decode_image(data, color=True, ...)`` raises, without keeping (or making) its pixels.

    A JPEG whose header gives its size is decoded at 1/8 scale in grayscale
    (libjpeg's scaled decode: it still reads and Huffman-decodes every byte of
    the entropy-coded data of every component and scan, so a truncated or
    corrupt file fails as a full decode does; it skips most of the inverse DCT,
    the chroma upsampling and the color conversion). The pixel limit is then
    checked on the header's size, which is the size a full decode gives. Any
    other file, or a JPEG whose header we cannot read, takes the full decode.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLarge(f"{len(data)} bytes is more than the limit of {max_bytes}", "bytes")
    if not data:
        raise ImageError("empty file")
    header = read_header(data)
    if header is None or header.format != "jpeg":
        decode_image(data, color=True, max_pixels=max_pixels)
        return
    if header.width * header.height > max_pixels:
        raise ImageTooLarge(f"{header.width}x{header.height} pixels is more than the limit of {max_pixels}")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if img is None or img.size == 0:
        raise ImageError("cannot be decoded as an image (looks like jpeg, but is corrupt)")


def read_image(path: str, *, color: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode an image file; ImageError names the file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise ImageError(f"{path}: {err.strerror or err}") from None
    try:
        return decode_image(data, color=color, max_pixels=max_pixels)
    except ImageError as err:
        raise ImageError(f"{path}: {err}") from None


def resize_exact(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Caffe's resize: cv::resize to (width, height) with INTER_LINEAR; 0 keeps that size.

    Like convert_imageset, nothing is resized unless both sizes are given.
    """
    if height <= 0 or width <= 0 or (img.shape[0] == height and img.shape[1] == width):
        return img
    out = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    return out[:, :, None] if out.ndim == 2 else out


def resize_keep_aspect(img: np.ndarray, *, shorter_side: int = 0, longer_side: int = 0) -> np.ndarray:
    """Scale so the shorter side is `shorter_side` (or the longer is `longer_side`); never enlarges.

    INTER_AREA is used when shrinking, the better filter for downscaling.
    """
    h, w = img.shape[:2]
    if shorter_side > 0:
        scale = shorter_side / min(h, w)
    elif longer_side > 0:
        scale = longer_side / max(h, w)
    else:
        return img
    if scale >= 1.0:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return out[:, :, None] if out.ndim == 2 else out


def encode_image(img: np.ndarray, ext: str = "jpg", *, quality: int = 95) -> bytes:
    """Encode an H x W x C uint8 image as 'jpg' or 'png' bytes (OpenCV, like Caffe's imencode)."""
    ext = ext.lower().lstrip(".")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in ("jpg", "jpeg") else []
    ok, buf = cv2.imencode("." + ext, img, params)
    if not ok:
        raise ImageError(f"OpenCV could not encode the image as {ext}")
    return buf.tobytes()


def hwc_to_chw(img: np.ndarray) -> np.ndarray:
    """H x W x C -> C x H x W (Caffe's Datum layout), contiguous."""
    if img.ndim == 2:
        img = img[:, :, None]
    return np.ascontiguousarray(img.transpose(2, 0, 1))
