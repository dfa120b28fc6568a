"""datakit.formats.datum (also importable as datakit.datum): Datum records framed by hand, byte for byte what protobuf writes, and parsed back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datakit.formats.datum import decode_datum, encode_datum, encode_datum_bytes, parse_datum_fields
from datakit.errors import FormatError
from datakit.formats import caffe_pb2
from datakit.formats.wire import varint

from tests.test_db import _images


def test_raw_datum_bytes_equal_protobuf_serialization():
    img = _images(1)[0]
    d = caffe_pb2.Datum(channels=3, height=img.shape[1], width=7, data=img.tobytes(), label=300, encoded=False)
    assert encode_datum(img, 300) == d.SerializeToString()
    parsed = caffe_pb2.Datum.FromString(encode_datum(img, 300))
    assert (parsed.channels, parsed.height, parsed.width, parsed.label, parsed.encoded) == (3, img.shape[1], 7, 300, False)
    assert parsed.HasField("encoded")  # Caffe sets encoded=false explicitly


def test_encoded_datum_bytes_equal_protobuf_serialization():
    d = caffe_pb2.Datum(data=b"\xff\xd8jpegbytes", label=2, encoded=True)
    assert encode_datum_bytes(b"\xff\xd8jpegbytes", 2) == d.SerializeToString()


def test_decode_datum_raw_float_and_encoded():
    img = _images(1)[0]
    arr, label = decode_datum(encode_datum(img, 4))
    assert label == 4 and arr.dtype == np.uint8 and np.array_equal(arr, img)

    fl = caffe_pb2.Datum(channels=1, height=2, width=2, label=1)
    fl.float_data.extend([0.5, 1.5, 2.5, 3.5])
    arr, label = decode_datum(fl.SerializeToString())
    assert arr.dtype == np.float32 and arr.shape == (1, 2, 2) and arr[0, 1, 1] == 3.5 and label == 1

    hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
    png = cv2.imencode(".png", hwc)[1].tobytes()
    arr, label = decode_datum(encode_datum_bytes(png, 9))
    assert label == 9 and np.array_equal(arr, img)
    gray, _ = decode_datum(encode_datum_bytes(png, 9), color=False)
    assert gray.shape == (1,) + img.shape[1:]
    assert np.array_equal(gray[0], cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE))


def test_bad_datum_bytes_raise_format_error():
    with pytest.raises(FormatError, match="rec 7"):
        parse_datum_fields(b"\x22\x50abc", "rec 7")  # length runs past the end
    with pytest.raises(FormatError):
        decode_datum(encode_datum(_images(1)[0], 1)[:-30])


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, (1 << 31) - 1, -1, -300])
def test_varint_is_protobufs(value):
    d = caffe_pb2.Datum(label=value)
    assert d.SerializeToString() == b"\x28" + varint(value)


def test_the_old_import_path_gives_the_same_functions():
    import datakit.datum
    import datakit.formats.datum
    assert all(getattr(datakit.datum, n) is getattr(datakit.formats.datum, n) for n in datakit.datum.__all__)
    assert set(datakit.datum.__all__) == set(datakit.formats.datum.__all__)


def test_raw_layout_reads_records_of_its_shape_and_refuses_every_other():
    """RawLayout.split gives the pixels and label of a raw Datum exactly as parse_datum_fields does,
    and None (so the caller parses, and names what is wrong) for any record of another layout."""
    from datakit.formats.datum import RawLayout, encode_datum, encode_datum_bytes, parse_datum_fields
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    layout = RawLayout.of(encode_datum(img, 7))
    assert layout is not None and layout.shape == (3, 4, 5)
    for label in (0, 1, 127, 128, 300000, -1, 2**31 - 1):
        other = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
        rec = encode_datum(other, label)
        pixels, got = layout.split(rec)
        fields = parse_datum_fields(rec)
        assert got == fields.label == label and bytes(pixels) == other.tobytes() == bytes(fields.data)
    without_encoded_flag = encode_datum(img, 3)[:-2]          # protobuf without `encoded: false`
    assert layout.split(without_encoded_flag) is None         # another tail: parsed the slow way
    refused = [
        encode_datum(img[:, :3], 1),                          # another shape
        encode_datum(img, 1)[:-1],                            # truncated
        encode_datum(img, 1) + b"\x30\x01",                   # an extra field after the tail
        encode_datum_bytes(b"\xff\xd8 not really a jpeg", 1),  # encoded
        b"",
    ]
    for rec in refused:
        assert layout.split(rec) is None
    assert RawLayout.of(encode_datum_bytes(b"\xff\xd8jpeg", 1)) is None
