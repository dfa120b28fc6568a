"""BlobProto and mean files against the real ones Caffe wrote."""

from __future__ import annotations

import numpy as np
import pytest

from datakit.errors import FormatError
from datakit.formats import caffe_pb2
from datakit.formats.blobproto import (array_to_blob, blob_to_array, legacy_blob_bytes, read_binaryproto, read_mean,
                                       write_binaryproto, write_mean)
from tests.wire import encode_field_bytes, encode_varint_field


def test_imagenet_mean_reads_as_chw_equal_to_pycaffe_npy(shared_data):
    mean = read_mean(shared_data / "means/imagenet_mean.binaryproto")
    assert mean.shape == (3, 256, 256)
    assert mean.dtype == np.float32
    reference = np.load(shared_data / "means/ilsvrc_2012_mean.npy", allow_pickle=False)
    # PROVENANCE.md: exactly equal after reshaping (every value is a float32).
    assert np.array_equal(mean.astype(np.float64), reference)
    np.testing.assert_allclose(mean[:, 128, 128], [98.2245, 111.3169, 123.7593], atol=1e-4)


def test_legacy_4d_blob_keeps_its_stored_shape(shared_data):
    raw = read_binaryproto(shared_data / "means/imagenet_mean.binaryproto")
    assert raw.shape == (1, 3, 256, 256)


@pytest.mark.parametrize("name", ["imagenet_mean.binaryproto", "half_0B_mean.binaryproto"])
def test_write_mean_is_byte_identical_to_caffe(shared_data, tmp_path, name):
    original = (shared_data / "means" / name).read_bytes()
    write_mean(tmp_path / "again.binaryproto", read_mean(shared_data / "means" / name))
    assert (tmp_path / "again.binaryproto").read_bytes() == original


def test_mean_npy_round_trip_is_bit_exact(shared_data, tmp_path):
    mean = read_mean(shared_data / "means/imagenet_mean.binaryproto")
    write_mean(tmp_path / "m.npy", mean)
    back = np.load(tmp_path / "m.npy", allow_pickle=False)
    assert back.shape == (3, 256, 256) and back.dtype == np.float32
    write_mean(tmp_path / "m.binaryproto", back)
    assert (tmp_path / "m.binaryproto").read_bytes() == (shared_data / "means/imagenet_mean.binaryproto").read_bytes()


def test_blob_with_shape_round_trips_and_matches_hand_encoding(tmp_path):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    write_binaryproto(tmp_path / "b.binaryproto", arr)
    data = (tmp_path / "b.binaryproto").read_bytes()
    # Independent encoding: field 5 packed floats, then field 7 BlobShape{1: packed int64}.
    shape = encode_field_bytes(1, bytes([2, 3]))
    expected = encode_field_bytes(5, arr.tobytes()) + encode_field_bytes(7, shape)
    assert data == expected
    parsed = caffe_pb2.BlobProto.FromString(expected)
    np.testing.assert_array_equal(blob_to_array(parsed), arr)
    np.testing.assert_array_equal(read_binaryproto(tmp_path / "b.binaryproto"), arr)


@pytest.mark.parametrize("shape,legacy,with_diff", [((0,), False, False), ((7,), False, True), ((), False, False),
                                                  ((3, 2, 2), True, False), ((2, 3, 4, 5), False, True),
                                                  ((300, 500), False, False)])
def test_array_to_blob_bytes_equal_protobufs_own_filling(shape, legacy, with_diff):
    """The packed-bytes fast path serializes exactly what filling the repeated fields one by one does."""
    rng = np.random.default_rng(len(shape))
    arr = rng.standard_normal(shape).astype(np.float64)  # float64 in: stored as float32, as Caffe does
    diff = rng.standard_normal(shape) if with_diff else None
    ref = caffe_pb2.BlobProto()
    if legacy:
        ref.num, ref.channels, ref.height, ref.width = (1,) * (4 - len(shape)) + shape
    else:
        ref.shape.dim.extend(shape)
    ref.data.extend(arr.astype(np.float32).ravel().tolist())
    if diff is not None:
        ref.diff.extend(diff.astype(np.float32).ravel().tolist())
    assert array_to_blob(arr, diff=diff, legacy_4d=legacy).SerializeToString() == ref.SerializeToString()


@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 2, 2), (1, 3, 256, 256), (2, 1, 300, 1)])
def test_hand_written_legacy_blob_equals_protobufs_serialization(shape):
    """The mean writer's protobuf-free bytes are protobuf's own for the same legacy 4-D blob."""
    arr = np.random.default_rng(len(shape)).uniform(0, 255, shape)
    ref = caffe_pb2.BlobProto()
    ref.num, ref.channels, ref.height, ref.width = (1,) * (4 - len(shape)) + shape
    ref.data.extend(arr.astype(np.float32).ravel().tolist())
    assert legacy_blob_bytes(arr) == ref.SerializeToString()
    with pytest.raises(FormatError):
        legacy_blob_bytes(np.zeros((1, 1, 1, 1, 1)))


def test_legacy_header_bytes(tmp_path):
    write_mean(tmp_path / "m.binaryproto", np.zeros((3, 2, 2), np.float32))
    data = (tmp_path / "m.binaryproto").read_bytes()
    header = (encode_varint_field(1, 1) + encode_varint_field(2, 3) + encode_varint_field(3, 2)
              + encode_varint_field(4, 2))
    assert data.startswith(header)
    assert data[len(header):] == encode_field_bytes(5, np.zeros(12, np.float32).tobytes())


def test_truncated_binaryproto_is_a_clear_error(shared_data, tmp_path):
    cut = tmp_path / "cut.binaryproto"
    cut.write_bytes((shared_data / "means/imagenet_mean.binaryproto").read_bytes()[:5000])
    with pytest.raises(FormatError, match="cut.binaryproto"):
        read_mean(cut)


def test_count_mismatch_is_reported(tmp_path):
    blob = array_to_blob(np.zeros((2, 2), np.float32))
    blob.shape.dim[0] = 3
    (tmp_path / "bad.binaryproto").write_bytes(blob.SerializeToString())
    with pytest.raises(FormatError, match="holds 4 values but its shape"):
        read_binaryproto(tmp_path / "bad.binaryproto")


def test_cli_truncated_binaryproto_one_line_nonzero(shared_data, tmp_path, cli):
    cut = tmp_path / "cut.binaryproto"
    cut.write_bytes((shared_data / "means/imagenet_mean.binaryproto").read_bytes()[:777])
    result = cli("datakit", "describe", str(cut))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(cut) in lines[0] and "truncated" in lines[0]


def test_a_pickled_npy_mean_is_refused_without_suggesting_to_load_it(tmp_path):
    """numpy's own message says 'If you trust the file you can load it unsafely using allow_pickle=':
    advice datakit must not pass on (it never loads a pickle)."""
    import numpy as np

    from datakit.errors import FormatError
    from datakit.formats.blobproto import read_mean
    path = tmp_path / "mean.npy"
    with open(path, "wb") as fh:  # an object-array header (what a pickled .npy starts with), then junk
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": (1,)})
        fh.write(b"\x80\x04junk")
    with pytest.raises(FormatError) as err:
        read_mean(path)
    assert "holds Python objects (a pickle), which datakit never loads" in str(err.value)
    assert "allow_pickle" not in str(err.value) and "trust" not in str(err.value)
