"""MNIST idx files (.idx / .idx.gz): read them as arrays, export PNG images and a Caffe list.

The idx format: a 4-byte magic (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C
order, big-endian. MNIST uses type 0x08 (uint8): images N×28×28, labels N.
Exporting to PNG files plus ``path label`` lines makes MNIST usable by the
same `datakit convert` a user runs on their own images (Caffe's tutorial
instead converts idx to LMDB directly).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from collections.abc import Iterator

import numpy as np

from datakit.atomic import write_bytes_atomic, write_text_atomic
from datakit.errors import FormatError, MissingFormatFile

# type code -> big-endian dtype
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MissingFormatFile(f"{path}: file not found") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise FormatError(f"{path}: damaged gzip data ({err}); download the file again") from None
    return raw


def parse_idx(data: bytes, source: str = "<idx>") -> np.ndarray:
    """Decode idx bytes into a native-endian array of the stored shape."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise FormatError(f"{source}: not an idx file (magic must start with two zero bytes)")
    code, ndim = data[2], data[3]
    if code not in _TYPES:
        raise FormatError(f"{source}: unknown idx type code 0x{code:02x}")
    if ndim < 1 or len(data) < 4 + 4 * ndim:
        raise FormatError(f"{source}: truncated idx header ({ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_TYPES[code])
    count = int(np.prod(dims, dtype=np.int64))
    offset = 4 + 4 * ndim
    need = offset + count * dtype.itemsize
    if len(data) != need:
        raise FormatError(f"{source}: {len(data)} bytes but the header {dims} needs {need} "
                          "(truncated or not an idx file)")
    arr = np.frombuffer(data, dtype, count=count, offset=offset).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx or idx.gz file (gzip detected from its content, not its name)."""
    p = Path(path)
    return parse_idx(_read_bytes(p), str(p))


def read_mnist(images: str | os.PathLike, labels: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(images N×H×W uint8, labels N uint8), checked to match in count."""
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise FormatError(f"{images}: expected N×H×W uint8 images, got {x.shape} {x.dtype}")
    if y.ndim != 1:
        raise FormatError(f"{labels}: expected a 1-D label file, got shape {y.shape}")
    if len(x) != len(y):
        raise FormatError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    return x, y


def iter_export_names(n: int, prefix: str = "") -> Iterator[str]:
    width = max(5, len(str(max(n - 1, 0))))
    for i in range(n):
        yield f"{prefix}{i:0{width}d}.png"


def export_images(images: np.ndarray, labels: np.ndarray, out_dir: str | os.PathLike,
                  list_path: str | os.PathLike, *, subdir: str = "", limit: int | None = None,
                  progress: bool | None = False) -> int:
    """Write each image as a grayscale PNG under ``out_dir/subdir`` and a Caffe list of them.

    List lines are ``subdir/00000.png 7`` relative to ``out_dir`` (the root
    to give `datakit convert`). Files already present with the same bytes are
    kept; every file and the list appear atomically. Returns the count. `progress`: a bar
    as ``datakit.report.progress_bar`` decides (None: on a terminal only).
    """
    import cv2  # noqa: PLC0415 - only needed for export

    from datakit.report import progress_bar  # noqa: PLC0415

    root = Path(out_dir)
    folder = root / subdir if subdir else root
    folder.mkdir(parents=True, exist_ok=True)
    n = len(images) if limit is None else min(limit, len(images))
    lines = []
    bar = progress_bar(n, progress, desc="idx-export", unit="img")
    for i, name in enumerate(iter_export_names(n)):
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(images[i]))
        if not ok:
            raise FormatError(f"could not encode image {i} as PNG")
        target = folder / name
        data = buf.tobytes()
        if not (target.is_file() and target.read_bytes() == data):
            write_bytes_atomic(target, data, fsync=False)
        rel = f"{subdir}/{name}" if subdir else name
        lines.append(f"{rel} {int(labels[i])}\n")
        bar.update(1)
    bar.close()
    write_text_atomic(list_path, "".join(lines))
    return n
