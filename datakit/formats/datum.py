"""Caffe ``Datum`` records: encode and decode, byte for byte as Caffe writes them.

A Datum (caffe.proto: channels=1, height=2, width=3, data=4, label=5,
float_data=6, encoded=7) is the value of every LMDB / LevelDB record that
Caffe's ``convert_imageset`` writes and its Data layer reads. Caffe builds
them two ways:

* raw (``CVMatToDatum``): channels, height, width, the uint8 pixels in C x H x W
  order (BGR), the label, and ``encoded: false`` set explicitly, so the
  serialized bytes end with ``38 00``;
* encoded (``ReadFileToDatum`` or after ``cv::imencode``): only the file bytes,
  the label and ``encoded: true``.

The wire format is tiny, so we write it by hand (the bytes equal protobuf's
``SerializeToString`` of the same message, which the tests check) and read the
common case by hand too: that lets a reader take the pixels straight out of
an LMDB memory map with ``np.frombuffer`` instead of copying them through a
protobuf object. Anything unusual (float_data, unknown fields) goes through
the generated ``caffe_pb2`` parser.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datakit.errors import FormatError
from datakit.formats.wire import varint

__all__ = [
    "DatumFields", "RawLayout", "encode_datum", "encode_datum_bytes", "raw_datum_parts", "parse_datum_fields",
    "decode_datum", "datum_to_array",
]


def raw_datum_parts(channels: int, height: int, width: int, label: int) -> tuple[bytes, bytes]:
    """The bytes before and after the C x H x W pixels of a raw Datum.

    prefix + pixels + suffix == encode_datum(pixels, label); a writer that has
    its own buffer (the converter's shared memory) copies the pixels straight
    into place between the two instead of building the Datum in Python.
    """
    size = channels * height * width
    prefix = b"".join((b"\x08", varint(channels), b"\x10", varint(height), b"\x18", varint(width),
                       b"\x22", varint(size)))
    return prefix, b"".join((b"\x28", varint(int(label)), b"\x38\x00"))


def encode_datum(image_chw: np.ndarray, label: int) -> bytes:
    """A raw Datum: uint8 C x H x W pixels (BGR) and a label, as Caffe's CVMatToDatum writes it."""
    if image_chw.dtype != np.uint8 or image_chw.ndim != 3:
        raise ValueError(f"expected a uint8 C x H x W array, got {image_chw.dtype} {image_chw.shape}")
    c, h, w = image_chw.shape
    prefix, suffix = raw_datum_parts(c, h, w, label)
    return b"".join((prefix, np.ascontiguousarray(image_chw).tobytes(), suffix))


def encode_datum_bytes(encoded: bytes, label: int) -> bytes:
    """An encoded Datum: the JPEG/PNG bytes, the label and ``encoded: true`` (Caffe's ReadFileToDatum)."""
    return b"".join((b"\x22", varint(len(encoded)), bytes(encoded),
                     b"\x28", varint(int(label)), b"\x38\x01"))


@dataclass(frozen=True, slots=True)
class DatumFields:
    """The fields of one Datum; `data` is a view into the buffer it was parsed from (no copy)."""

    channels: int
    height: int
    width: int
    data: memoryview
    label: int
    encoded: bool
    float_data: np.ndarray | None = None


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise FormatError("Datum: truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _int32(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_datum_fields(value: bytes | memoryview, where: str = "Datum") -> DatumFields:
    """Parse a serialized Datum without copying its pixel bytes.

    `where` names the record (database and key) in the FormatError raised for
    bytes that are not a Datum.
    """
    buf = memoryview(value)
    end = len(buf)
    pos = 0
    channels = height = width = label = 0
    encoded = False
    data = buf[0:0]
    floats: list[np.ndarray] = []
    try:
        while pos < end:
            tag, pos = _read_varint(buf, pos, end)
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                val, pos = _read_varint(buf, pos, end)
                if field == 1:
                    channels = _int32(val)
                elif field == 2:
                    height = _int32(val)
                elif field == 3:
                    width = _int32(val)
                elif field == 5:
                    label = _int32(val)
                elif field == 7:
                    encoded = bool(val)
            elif wire == 2:
                length, pos = _read_varint(buf, pos, end)
                if pos + length > end:
                    raise FormatError(f"{where}: truncated (field {field} runs past the end)")
                if field == 4:
                    data = buf[pos:pos + length]
                elif field == 6:
                    floats.append(np.frombuffer(buf[pos:pos + length], dtype="<f4"))
                pos += length
            elif wire == 5:
                if pos + 4 > end:
                    raise FormatError(f"{where}: truncated fixed32 field {field}")
                if field == 6:
                    floats.append(np.frombuffer(buf[pos:pos + 4], dtype="<f4"))
                pos += 4
            elif wire == 1:
                pos += 8
            else:
                raise FormatError(f"{where}: not a Caffe Datum (wire type {wire} in field {field})")
        if pos != end:
            raise FormatError(f"{where}: truncated Datum")
    except FormatError as err:
        msg = str(err)
        raise FormatError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    float_data = np.concatenate(floats).astype(np.float32) if floats else None
    return DatumFields(channels, height, width, data, label, encoded, float_data)


@dataclass(frozen=True, slots=True)
class RawLayout:
    """The bytes every raw Datum of one shape shares, to read a record with two comparisons.

    A database of raw Datums (what ``convert_imageset`` and ``datakit convert`` write without
    ``--encoded``) holds records that differ only in their pixels and label: the same tags,
    shape and data length before the pixels, and ``28 <label> 38 00`` (or ``28 <label>``) after
    them. ``split`` checks that a record has exactly this layout and returns its pixels and
    label; any other record (another shape, float_data, extra fields, a damaged one) gives
    None, and the caller parses it with ``parse_datum_fields``, which names what is wrong.
    """

    prefix: bytes
    size: int
    tail: bytes
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, value: bytes | memoryview) -> RawLayout | None:
        """The layout of this record, or None when it is not a plain raw Datum."""
        fields = parse_datum_fields(value)
        c, h, w = fields.channels, fields.height, fields.width
        if fields.encoded or fields.float_data is not None or min(c, h, w) <= 0 or len(fields.data) != c * h * w:
            return None
        prefix, _ = raw_datum_parts(c, h, w, 0)
        buf = memoryview(value)
        end = len(prefix) + c * h * w
        if buf[:len(prefix)] != prefix or len(buf) < end + 2 or buf[end] != 0x28:
            return None
        _, pos = _read_varint(buf, end + 1, len(buf))
        tail = bytes(buf[pos:])
        if tail not in (b"", b"\x38\x00"):
            return None
        return cls(prefix, c * h * w, tail, (c, h, w))

    def split(self, value: bytes | memoryview) -> tuple[memoryview, int] | None:
        """(pixel bytes, label) of a record with this layout (a view, no copy), else None."""
        buf = memoryview(value)
        p = len(self.prefix)
        end = p + self.size
        if len(buf) < end + 2 or buf[end] != 0x28 or buf[:p] != self.prefix:
            return None
        try:
            label, pos = _read_varint(buf, end + 1, len(buf))
        except FormatError:
            return None
        if buf[pos:] != self.tail:
            return None
        return buf[p:end], _int32(label)


def _decode_flag(color: bool | None) -> int:
    import cv2  # only encoded records need OpenCV: raw readers (mean, the Data layer) start without it
    # Caffe: DecodeDatumToCVMat(is_color) uses COLOR or GRAYSCALE; DecodeDatumNative uses ANYCOLOR.
    if color is None:
        return cv2.IMREAD_ANYCOLOR
    return cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE


def datum_to_array(fields: DatumFields, *, color: bool | None = True, where: str = "Datum") -> np.ndarray:
    """The image of a parsed Datum as C x H x W: uint8 for pixels, float32 for float_data.

    Encoded records are decoded with OpenCV the way Caffe's DecodeDatumToCVMat
    does: `color=True` gives 3 channels, `False` one, `None` the file's own
    (DecodeDatumNative, what compute_image_mean uses).
    """
    if fields.encoded:
        import cv2  # see _decode_flag
        img = cv2.imdecode(np.frombuffer(fields.data, dtype=np.uint8), _decode_flag(color))
        if img is None or img.size == 0:
            raise FormatError(f"{where}: encoded image bytes cannot be decoded")
        if img.ndim == 2:
            img = img[:, :, None]
        return np.ascontiguousarray(img.transpose(2, 0, 1))
    c, h, w = fields.channels, fields.height, fields.width
    if c <= 0 or h <= 0 or w <= 0:
        raise FormatError(f"{where}: raw Datum has shape {c}x{h}x{w}; expected positive channels/height/width")
    size = c * h * w
    if len(fields.data):
        if len(fields.data) != size:
            raise FormatError(f"{where}: data has {len(fields.data)} bytes, expected {c}x{h}x{w} = {size}")
        return np.frombuffer(fields.data, dtype=np.uint8).reshape(c, h, w)
    if fields.float_data is not None:
        if fields.float_data.size != size:
            raise FormatError(f"{where}: float_data has {fields.float_data.size} values, expected {size}")
        return fields.float_data.reshape(c, h, w)
    raise FormatError(f"{where}: Datum has neither data nor float_data")


def decode_datum(value: bytes | memoryview, color: bool | None = True) -> tuple[np.ndarray, int]:
    """A serialized Datum -> (C x H x W image, label).

    Raw records give uint8 pixels (a read-only view of `value`; copy it to
    modify), float_data records float32, encoded records are decoded with
    OpenCV (color by default, like Caffe's DecodeDatumToCVMat; None = native).
    """
    fields = parse_datum_fields(value)
    return datum_to_array(fields, color=color), fields.label
