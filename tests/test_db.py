"""The database reader/writer API and Datum encoding (the contract the trainer reads through)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest

from datakit.formats.datum import encode_datum, encode_datum_bytes
from datakit.db import PROGRESS_NAME, detect_backend, incomplete_path, open_reader
from datakit.db.hdf5_backend import HDF5Writer
from datakit.db.leveldb_backend import LevelDBWriter
from datakit.db.lmdb_backend import LmdbWriter
from datakit.errors import DatabaseError


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (3, 5 + i % 3, 7), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_kv_round_trip_in_key_order(tmp_path, backend):
    imgs = _images(12)
    items = [(f"{i:08d}_dir/img{i}.jpg".encode(), encode_datum(img, i % 4)) for i, img in enumerate(imgs)]
    path = tmp_path / "db"
    writer = LmdbWriter(path) if backend == "lmdb" else LevelDBWriter(path)
    writer.write(items[:5])
    writer.write(items[5:])
    writer.close()
    assert detect_backend(path) == backend
    with open_reader(path) as reader:
        assert reader.backend == backend and len(reader) == 12
        records = list(reader)
        raw = list(reader.raw_items())
    assert [r.key for r in records] == [k.decode() for k, _ in items]
    assert [r.label for r in records] == [i % 4 for i in range(12)]
    for r, img in zip(records, imgs):
        assert np.array_equal(r.image, img) and r.encoded is None
    assert raw == items


def test_lmdb_map_grows_instead_of_failing(tmp_path):
    writer = LmdbWriter(tmp_path / "db", map_size=64 * 1024)
    big = np.zeros((3, 64, 64), np.uint8)
    writer.write([(f"{i:08d}".encode(), encode_datum(big, i)) for i in range(30)])  # ~370 KB
    writer.close()
    with open_reader(tmp_path / "db") as reader:
        assert len(reader) == 30


def test_leveldb_tables_are_written_uncompressed(tmp_path):
    """Blank images would shrink many times under Snappy: the compacted tables must hold them at full size."""
    value = encode_datum(np.zeros((3, 64, 64), np.uint8), 0)
    writer = LevelDBWriter(tmp_path / "db")
    writer.write([(f"{i:08d}".encode(), value) for i in range(50)])
    writer.db.compact_range()  # memtable -> sorted tables, written with the writer's options
    writer.close()
    tables = sum(p.stat().st_size for p in (tmp_path / "db").glob("*.ldb"))
    assert tables >= 50 * len(value)


def _resident_fraction(path) -> float:
    """Share of the file's pages in the page cache (mincore on a read-only mapping of it)."""
    import ctypes
    import mmap
    size = os.path.getsize(path)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        pages = -(-size // mmap.PAGESIZE)
        vec = ctypes.create_string_buffer(pages)
        assert libc.mincore(addr, size, vec) == 0, ctypes.get_errno()
        libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec.raw) / pages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page cache control is Linux-only")
def test_lmdb_drop_written_keeps_data_and_leaves_the_page_cache(tmp_path):
    """drop_written: every record reads back (across a map growth), and earlier commits left the page cache."""
    if subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip() \
            in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is in memory: there is no page cache to leave")
    value = encode_datum(np.arange(3 * 256 * 256, dtype=np.uint32).astype(np.uint8).reshape(3, 256, 256), 7)
    writer = LmdbWriter(tmp_path / "db", map_size=16 << 20, drop_written=True)  # grows to 128 MB on the way
    for start in range(0, 400, 40):
        writer.write([(f"{i:08d}".encode(), value) for i in range(start, start + 40)])
    dropped = writer._pages.dropped
    writer.close()
    data = tmp_path / "db" / "data.mdb"
    assert dropped > os.path.getsize(data) // 2
    assert _resident_fraction(data) < 0.6
    with open_reader(tmp_path / "db") as reader:
        records = list(reader.raw_items())
    assert len(records) == 400 and all(bytes(v) == value for _, v in records)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page cache control is Linux-only")
def test_drop_behind_leaves_the_data_and_drops_the_pages(tmp_path):
    """The HDF5 writer's way: a file written front to back, advance() after each piece."""
    from datakit.db.pagecache import DropBehind
    if subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip() \
            in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is in memory: there is no page cache to leave")
    piece = np.random.default_rng(0).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "f.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    pages = DropBehind(fd)
    for _ in range(10):
        os.write(fd, piece)
        pages.advance(os.fstat(fd).st_size)
    os.close(fd)
    assert pages.dropped >= 8 * len(piece)
    assert _resident_fraction(path) < 0.5
    assert path.read_bytes() == piece * 10


def test_an_unclosed_lmdb_writer_is_freed_at_once(tmp_path):
    """No reference cycle keeps the environment open: this process can open the path again right away."""
    writer = LmdbWriter(tmp_path / "db", drop_written=True)
    writer.write([(b"00000000_a", encode_datum(np.zeros((3, 4, 4), np.uint8), 0))])
    del writer
    again = LmdbWriter(tmp_path / "db")  # py-lmdb refuses a second open of a live environment
    again.close()


def test_truncate_from_removes_later_keys(tmp_path):
    writer = LmdbWriter(tmp_path / "db")
    writer.write([(f"{i:08d}_x".encode(), encode_datum(_images(1)[0], i)) for i in range(10)])
    assert writer.truncate_from(b"00000006") == 4
    writer.write([(b"00000006_y", encode_datum(_images(1)[0], 66))])
    writer.close()
    with open_reader(tmp_path / "db") as reader:
        assert [r.key for r in reader][-2:] == ["00000005_x", "00000006_y"]


def test_encoded_records_bytes_or_decoded(tmp_path):
    img = _images(1)[0]
    png = cv2.imencode(".png", np.ascontiguousarray(img.transpose(1, 2, 0)))[1].tobytes()
    writer = LmdbWriter(tmp_path / "db")
    writer.write([(b"00000000_a.png", encode_datum_bytes(png, 3))])
    writer.close()
    with open_reader(tmp_path / "db") as reader:
        rec = next(iter(reader))
    assert rec.image is None and rec.encoded == png and rec.label == 3
    with open_reader(tmp_path / "db", decode=True) as reader:
        rec = next(iter(reader))
    assert np.array_equal(rec.image, img) and rec.encoded == png


def test_hdf5_shards_list_and_reader(tmp_path):
    imgs = [img for img in _images(10) if img.shape[1] == 5][:3] * 3
    writer = HDF5Writer(tmp_path / "h", chunk=4)
    assert writer.write([(img, i) for i, img in enumerate(imgs)]) is True
    writer.finish(tmp_path / "h")
    writer.close()
    listed = (tmp_path / "h" / "list.txt").read_text().split()
    assert [p.rsplit("/", 1)[1] for p in listed] == ["data_00000.h5", "data_00001.h5", "data_00002.h5"]
    with h5py.File(listed[0], "r") as h5:
        assert h5["data"].shape == (4, 3, 5, 7) and h5["data"].dtype == np.float32
        assert list(h5["label"][:]) == [0.0, 1.0, 2.0, 3.0]
    for path in (tmp_path / "h", tmp_path / "h" / "list.txt", tmp_path / "h" / "data_00002.h5"):
        assert detect_backend(path) == "hdf5"
    with open_reader(tmp_path / "h") as reader:
        recs = list(reader)
    assert len(recs) == 9 and [r.label for r in recs] == list(range(9))
    assert all(np.array_equal(r.image, img.astype(np.float32)) for r, img in zip(recs, imgs))
    with pytest.raises(DatabaseError, match="arrays, not serialized Datums"):
        next(iter(open_reader(tmp_path / "h").raw_items()))


def test_detect_backend_errors_name_the_path(tmp_path):
    with pytest.raises(DatabaseError, match="not found"):
        detect_backend(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatabaseError, match="not a database"):
        detect_backend(tmp_path / "empty")
    part = incomplete_path(tmp_path / "db")
    part.mkdir()
    (part / PROGRESS_NAME).write_text(json.dumps({"status": "incomplete", "written": 42}))
    with pytest.raises(DatabaseError, match="interrupted.*42.*--resume"):
        open_reader(tmp_path / "db")


def test_reader_refuses_unfinished_database(tmp_path):
    writer = LmdbWriter(tmp_path / "db")
    writer.write([(b"00000000_a", encode_datum(_images(1)[0], 0))])
    writer.close()
    (tmp_path / "db" / PROGRESS_NAME).write_text(json.dumps({"status": "incomplete", "written": 1}))
    with pytest.raises(DatabaseError, match="has not finished"):
        open_reader(tmp_path / "db")
    with open_reader(tmp_path / "db", allow_incomplete=True) as reader:
        assert len(reader) == 1
