"""BlobProto <-> numpy, and the .binaryproto files Caffe writes means in.

A BlobProto gives its dimensions either in `shape` (current Caffe) or in the
legacy num/channels/height/width fields (every mean made by
compute_image_mean, and old caffemodels). We read both. Means are returned as
(C, H, W) whatever the file stored, because that is the shape `caffe.io`,
transformers and our trainer expect: a legacy 1xCxHxW blob never leaks out as
a 4-D array.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from datakit.atomic import write_bytes_atomic
from datakit.errors import FormatError, MissingFormatFile
from datakit.formats.wire import varint

if TYPE_CHECKING:  # protobuf is imported where a BlobProto object is built or parsed: writing a mean needs none
    from datakit.formats import caffe_pb2


def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """The blob's dimensions: `shape` when present, else the legacy 4-D fields, else flat."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    count = len(blob.data) or len(blob.double_data)
    return (count,)


def blob_to_array(blob: caffe_pb2.BlobProto, *, diff: bool = False, where: str = "blob") -> np.ndarray:
    """The blob's data (or diff) as an array of its shape: float32, or float64 for double_data."""
    if diff:
        values = blob.double_diff if len(blob.double_diff) else blob.diff
        dtype = np.float64 if len(blob.double_diff) else np.float32
    else:
        values = blob.double_data if len(blob.double_data) else blob.data
        dtype = np.float64 if len(blob.double_data) else np.float32
    shape = blob_shape(blob)
    arr = np.asarray(values, dtype=dtype)
    expected = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if arr.size != expected:
        raise FormatError(f"{where}: holds {arr.size} values but its shape {shape} needs {expected} "
                          "(file truncated or not written by Caffe?)")
    return arr.reshape(shape)


def array_to_blob(arr: np.ndarray, *, diff: np.ndarray | None = None,
                  legacy_4d: bool = False) -> caffe_pb2.BlobProto:
    """A BlobProto holding `arr` as float32 `data` (and `diff` if given).

    With `legacy_4d` the dimensions go in num/channels/height/width (padded
    with leading 1s to 4-D), as compute_image_mean writes them; otherwise in
    `shape`, as current Caffe writes caffemodels.
    """
    from datakit.formats import caffe_pb2

    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    if legacy_4d:
        if arr.ndim > 4:
            raise FormatError(f"a legacy 4-D blob cannot hold a {arr.ndim}-D array {arr.shape}")
        dims = (1,) * (4 - arr.ndim) + tuple(arr.shape)
        blob.num, blob.channels, blob.height, blob.width = (int(d) for d in dims)
    else:
        blob.shape.dim.extend(int(d) for d in arr.shape)
    packed = _packed_floats(_DATA_FIELD, arr)
    if diff is not None:
        packed += _packed_floats(_DIFF_FIELD, np.asarray(diff))
    # Filling a repeated field from Python walks it value by value (9 s for CaffeNet's fc6, 38M
    # floats); parsing the same values as one packed field is a copy. The bytes serialized are the same.
    blob.MergeFromString(packed)
    return blob


_DATA_FIELD, _DIFF_FIELD = 5, 6  # BlobProto: repeated float data = 5, diff = 6, both [packed = true]


def _packed_floats(field: int, values: np.ndarray) -> bytes:
    """The wire bytes of a packed `repeated float` field: tag, byte length, little-endian float32s."""
    raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
    if not raw:
        return b""  # an empty packed field is not written at all
    return varint(field << 3 | 2) + varint(len(raw)) + raw


def legacy_blob_bytes(arr: np.ndarray) -> bytes:
    """The serialized BlobProto of `arr` with num/channels/height/width (padded to 4-D) and packed float data.

    The bytes protobuf's SerializeToString gives for array_to_blob(arr, legacy_4d=True) (fields in number
    order: num=1, channels=2, height=3, width=4, data=5), written without importing protobuf: the mean
    command's start-up pays for nothing else.
    """
    arr = np.asarray(arr)
    if arr.ndim > 4:
        raise FormatError(f"a legacy 4-D blob cannot hold a {arr.ndim}-D array {arr.shape}")
    dims = (1,) * (4 - arr.ndim) + tuple(int(d) for d in arr.shape)
    head = b"".join(varint(field << 3) + varint(d) for field, d in zip((1, 2, 3, 4), dims))
    return head + _packed_floats(_DATA_FIELD, arr)


def parse_blobproto(data: bytes, *, where: str) -> caffe_pb2.BlobProto:
    from google.protobuf.message import DecodeError

    from datakit.formats import caffe_pb2

    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(data)
    except DecodeError as err:
        raise FormatError(f"{where}: not a valid BlobProto, file truncated or corrupt ({err})") from None
    return blob


def read_binaryproto(path: str | os.PathLike) -> np.ndarray:
    """Read a .binaryproto BlobProto file as an array of its stored shape."""
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        from datakit.model_zoo import fetch_hint  # noqa: PLC0415 - only on this error
        raise MissingFormatFile(f"{where}: file not found{fetch_hint(path)}") from None
    if not data:
        raise FormatError(f"{where}: empty file, not a BlobProto")
    return blob_to_array(parse_blobproto(data, where=where), where=where)


def write_binaryproto(path: str | os.PathLike, arr: np.ndarray, *, legacy_4d: bool = False) -> None:
    """Write `arr` as a BlobProto file, atomically."""
    data = legacy_blob_bytes(arr) if legacy_4d else array_to_blob(arr).SerializeToString()
    write_bytes_atomic(path, data)


def mean_to_chw(arr: np.ndarray, *, where: str) -> np.ndarray:
    """Bring a stored mean to (C, H, W): drop a leading num of 1, refuse anything else."""
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise FormatError(f"{where}: a mean image must be C x H x W (or 1 x C x H x W), got shape {arr.shape}")
    return arr


def read_mean(path: str | os.PathLike) -> np.ndarray:
    """A mean image as float32 (C, H, W), from Caffe's .binaryproto or numpy's .npy."""
    where = str(path)
    if str(path).lower().endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise MissingFormatFile(f"{where}: file not found") from None
        except (ValueError, OSError) as err:
            if "allow_pickle" in str(err):  # numpy's text suggests loading it unsafely: never
                raise FormatError(f"{where}: holds Python objects (a pickle), which datakit never loads; a mean "
                                  "is a float array saved with numpy.save") from None
            raise FormatError(f"{where}: not a readable .npy array ({err})") from None
    else:
        arr = read_binaryproto(path)
    return mean_to_chw(np.asarray(arr), where=where).astype(np.float32, copy=False)


def write_mean(path: str | os.PathLike, mean_chw: np.ndarray) -> None:
    """Write a (C, H, W) mean: .npy as float32 C x H x W, else a BlobProto 1 x C x H x W.

    The BlobProto uses the legacy num/channels/height/width fields, exactly as
    Caffe's compute_image_mean does, so our file is byte-identical to Caffe's
    for the same values.
    """
    mean_chw = mean_to_chw(np.asarray(mean_chw), where=str(path))
    if str(path).lower().endswith(".npy"):
        import io

        buf = io.BytesIO()
        np.save(buf, mean_chw.astype(np.float32), allow_pickle=False)
        write_bytes_atomic(path, buf.getvalue())
    else:
        write_binaryproto(path, mean_chw[None], legacy_4d=True)
