"""The per-image unit of work of a conversion: list entry -> record bytes, a pure function of its arguments.

Runs in the decoding workers (or inline, or in a partition on a cluster):
everything it needs is in the :class:`EncodeSpec` it is given, nothing comes
from module state. The bytes match convert_imageset's: raw C x H x W BGR
pixels, or with ``encoded`` the file's own bytes when no resize is asked and
the file's extension matches the encoding, otherwise ``cv::imencode``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from datakit.arena import ArenaMarker, ArenaSlot
from datakit.convert import caffe_key
from datakit.formats.datum import encode_datum, encode_datum_bytes, raw_datum_parts
from datakit.errors import ImageError, ListError
from datakit.images import decode_image, encode_image, hwc_to_chw, resize_exact
from datakit.imagelist import plainly_inside, safe_join

__all__ = ["EncodeSpec", "RawDatum", "caffe_key", "encode_batch", "encode_entry", "plainly_inside"]

Shape = tuple[int, int, int]
# (output index, payload or its ArenaMarker, C x H x W, error message)
EncodeResult = tuple[int, object, Shape | None, str | None]


@dataclass(frozen=True)
class EncodeSpec:
    """Everything a worker needs to turn a list entry into a record (small and picklable).

    `record_kind` is the target backend's: "datum" (serialized Datum bytes)
    or "array" (C x H x W uint8 pixels for a float backend such as HDF5).
    """

    root: str
    record_kind: str
    resize_height: int
    resize_width: int
    gray: bool
    encoded: bool
    encode_type: str
    allow_absolute: bool
    max_pixels: int


@dataclass(frozen=True, slots=True)
class RawDatum:
    """A raw Datum not serialized yet: a worker writes it straight into shared memory when it can."""

    image: np.ndarray  # H x W x C uint8, as OpenCV gives it
    label: int

    def parts(self) -> tuple[bytes, bytes, int]:
        c, h, w = chw(self.image)
        prefix, suffix = raw_datum_parts(c, h, w, self.label)
        return prefix, suffix, len(prefix) + c * h * w + len(suffix)

    def to_bytes(self) -> bytes:
        return encode_datum(hwc_to_chw(self.image), self.label)

    def put(self, slot: ArenaSlot) -> ArenaMarker | None:
        """Serialize into `slot` in place (header, then the pixels split into C x H x W planes by OpenCV)."""
        prefix, suffix, size = self.parts()
        c, h, w = chw(self.image)

        def fill(buf: memoryview) -> None:
            buf[:len(prefix)] = prefix
            planes = np.frombuffer(buf, np.uint8, c * h * w, len(prefix)).reshape(c, h, w)
            out = cv2.split(self.image, [planes[i] for i in range(c)]) if c > 1 else None
            if out is None or out[0].ctypes.data != planes[0].ctypes.data:  # gray, or OpenCV chose new buffers
                np.copyto(planes, self.image.reshape(h, w, c).transpose(2, 0, 1))
            buf[len(prefix) + c * h * w:] = suffix

        return slot.put_into(size, fill)


def same_ext(path: str, enc: str) -> bool:
    """Caffe's matchExt: case-insensitive, and 'jpg' also matches '.jpeg'."""
    ext = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    enc = enc.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def chw(img: np.ndarray) -> Shape:
    return (img.shape[2] if img.ndim == 3 else 1), img.shape[0], img.shape[1]


def encode_entry(spec: EncodeSpec, path: str, label: int) -> tuple[object, Shape]:
    """One list entry -> (Datum bytes or RawDatum, or C x H x W uint8 for an array backend; its shape).

    Raises ImageError naming the file for anything unreadable.
    """
    if os.path.isabs(path) and spec.allow_absolute:
        full: str | Path = Path(path)
    else:
        try:
            full = os.path.join(spec.root, path) if plainly_inside(path) else safe_join(spec.root, path)
        except ListError as err:
            raise ImageError(str(err)) from None
    try:
        # O_NONBLOCK: a FIFO (or a device) in the list must not hang the worker in open(); only regular
        # files are images
        fd = os.open(full, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ImageError(f"not a regular file: {full}")
            data = fh.read()
    except FileNotFoundError:
        raise ImageError(f"file not found: {full}") from None
    except OSError as err:
        raise ImageError(f"cannot read {full}: {err.strerror or err}") from None
    img = decode_image(data, color=not spec.gray, max_pixels=spec.max_pixels)
    img = resize_exact(img, spec.resize_height, spec.resize_width)
    c_h_w = chw(img)
    if spec.record_kind == "array":
        return hwc_to_chw(img), c_h_w
    if spec.encoded:
        enc = spec.encode_type
        if not enc:
            if "." not in os.path.basename(path):
                raise ImageError(f"cannot guess the encoding of {path!r} (no extension); pass --encode-type")
            enc = path.rsplit(".", 1)[-1].lower()
        if spec.resize_height == 0 and spec.resize_width == 0 and same_ext(path, enc):
            return encode_datum_bytes(data, label), c_h_w
        try:
            return encode_datum_bytes(encode_image(img, enc), label), c_h_w
        except (ImageError, cv2.error):
            raise ImageError(f"OpenCV cannot encode as {enc!r}; pass --encode-type jpg or png") from None
    return RawDatum(img, label), c_h_w


def _put(slot: ArenaSlot, payload: object) -> ArenaMarker | None:
    if isinstance(payload, RawDatum):
        return payload.put(slot)
    if isinstance(payload, np.ndarray):
        return slot.put_array(payload)
    return slot.put_bytes(payload)  # type: ignore[arg-type]  # an encoded Datum


def encode_batch(spec: EncodeSpec, items: Sequence[tuple[int, str, int]],
                 slot: ArenaSlot | None = None) -> list[EncodeResult]:
    """(index, path, label) -> (index, payload, shape, error) for each item; never raises for a bad image.

    With a `slot` of the shared arena the payloads are written there and each
    result carries the payload's ArenaMarker instead (when it fits).
    """
    out: list[EncodeResult] = []
    for index, path, label in items:
        try:
            payload, shape = encode_entry(spec, path, label)
            if slot is not None:
                marker = _put(slot, payload)
                if marker is not None:
                    out.append((index, marker, shape, None))
                    continue
            if isinstance(payload, RawDatum):
                payload = payload.to_bytes()
            out.append((index, payload, shape, None))
        except ImageError as err:
            out.append((index, None, None, str(err)))
        except (cv2.error, ValueError, MemoryError) as err:
            out.append((index, None, None, f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:200]}"))
    return out
