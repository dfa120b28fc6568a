"""`datakit mean`: equals numpy's mean on every backend, Caffe's BlobProto bytes, .npy <-> .binaryproto."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datakit.formats.datum import encode_datum, encode_datum_bytes
from datakit.db.hdf5_backend import HDF5Writer
from datakit.db.leveldb_backend import LevelDBWriter
from datakit.db.lmdb_backend import LmdbWriter
from datakit.errors import DatabaseError, FormatError
from datakit.formats import caffe_pb2
from datakit.mean import compute_mean, convert_mean, save_mean


def _images(n: int, shape=(3, 6, 5), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _kv(path, backend, values):
    writer = LmdbWriter(path) if backend == "lmdb" else LevelDBWriter(path)
    writer.write([(f"{i:08d}_r".encode(), v) for i, v in enumerate(values)])
    writer.close()
    return path


@pytest.mark.parametrize("backend,workers", [("lmdb", 1), ("lmdb", 2), ("leveldb", 2), ("lmdb", 0), ("leveldb", 0)])
def test_mean_of_raw_records_equals_numpy(tmp_path, backend, workers):
    imgs = _images(700)  # > 2 x 256 so two LMDB readers split the keys; > 257 folds the uint16 sums
    imgs[:300] = 255     # worst case for the integer accumulator
    db = _kv(tmp_path / "db", backend, [encode_datum(im, i % 5) for i, im in enumerate(imgs)])
    result = compute_mean(db, workers=workers, progress=False)
    expected = imgs.astype(np.float64).mean(axis=0)
    assert result.count == 700 and result.mean.dtype == np.float64
    np.testing.assert_allclose(result.mean, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.per_channel, expected.reshape(3, -1).mean(axis=1), atol=1e-9)


def test_raw_records_of_other_layouts_among_raw_ones_count_the_same(tmp_path):
    """The mean reads raw records through the first one's byte layout; records written another way
    (labels of two varint bytes, no `encoded: false` tail, float_data, a PNG) are parsed and counted
    all the same, and one of another size is still refused by name."""
    imgs = _images(8)
    values = [encode_datum(im, 200 + i) for i, im in enumerate(imgs)]  # labels >= 128: two varint bytes
    values[0] = encode_datum(imgs[0], 3)                                 # the first: a one-byte label
    values[2] = values[2][:-2]                                           # no `38 00` tail
    d = caffe_pb2.Datum(channels=3, height=6, width=5, label=1)
    d.float_data.extend(imgs[3].reshape(-1).astype(np.float32).tolist())
    values[3] = d.SerializeToString()                                    # float_data
    values[4] = encode_datum_bytes(cv2.imencode(".png", imgs[4].transpose(1, 2, 0))[1].tobytes(), 4)
    result = compute_mean(_kv(tmp_path / "db", "lmdb", values), workers=0, progress=False)
    assert result.count == 8
    np.testing.assert_allclose(result.mean, imgs.astype(np.float64).mean(axis=0), rtol=0, atol=1e-12)
    bad = [encode_datum(imgs[0], 0), encode_datum(imgs[1], 1), encode_datum(imgs[2][:, :4], 2)]
    with pytest.raises(FormatError, match=r"record '00000002_r' is 3x4x5 but record '00000000_r' is 3x6x5"):
        compute_mean(_kv(tmp_path / "bad", "lmdb", bad), workers=0, progress=False)


@pytest.mark.parametrize("workers", [1, 2])
def test_mean_of_encoded_records_equals_numpy_of_decoded(tmp_path, workers):
    imgs = _images(90, (3, 8, 8))
    pngs = [cv2.imencode(".png", im.transpose(1, 2, 0))[1].tobytes() for im in imgs]
    gray = cv2.imencode(".png", imgs[5, 0])[1].tobytes()  # a gray file in a color set is promoted, not fatal
    pngs[5] = gray
    db = _kv(tmp_path / "db", "leveldb", [encode_datum_bytes(p, 0) for p in pngs])
    decoded = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR).transpose(2, 0, 1) for p in pngs]
    result = compute_mean(db, workers=workers, progress=False)
    np.testing.assert_allclose(result.mean, np.mean(np.stack(decoded).astype(np.float64), axis=0), atol=1e-12)


def test_mean_of_float_data_and_hdf5(tmp_path):
    rng = np.random.default_rng(3)
    arrs = rng.normal(100, 30, (11, 2, 3, 4)).astype(np.float32)
    values = []
    for a in arrs:
        d = caffe_pb2.Datum(channels=2, height=3, width=4, label=0)
        d.float_data.extend(a.ravel())
        values.append(d.SerializeToString())
    result = compute_mean(_kv(tmp_path / "f", "lmdb", values), workers=1, progress=False)
    np.testing.assert_allclose(result.mean, arrs.astype(np.float64).mean(axis=0), rtol=1e-12)

    writer = HDF5Writer(tmp_path / "h5", chunk=4)
    writer.write([(a, 0) for a in arrs])
    writer.finish(tmp_path / "h5")
    writer.close()
    result = compute_mean(tmp_path / "h5", progress=False)
    assert result.count == 11
    np.testing.assert_allclose(result.mean, arrs.astype(np.float64).mean(axis=0), rtol=1e-12)


def test_small_raw_database_is_summed_in_this_process_with_the_same_bytes(tmp_path, monkeypatch):
    """workers=0 on a small raw LMDB: no pool is started, and the .binaryproto bytes equal a 2-worker pool's."""
    import datakit.mean.partitions as mean_mod  # where the pool is started

    imgs = _images(800, (3, 16, 16), seed=4)
    db = _kv(tmp_path / "db", "lmdb", [encode_datum(im, i % 3) for i, im in enumerate(imgs)])
    pooled = compute_mean(db, workers=2, progress=False)
    def no_pool(*args, **kwargs):
        raise AssertionError("a pool was started for a small raw database")
    monkeypatch.setattr(mean_mod, "_executor", no_pool)
    auto = compute_mean(db, workers=0, progress=False)
    save_mean(auto, tmp_path / "a.binaryproto")
    save_mean(pooled, tmp_path / "b.binaryproto")
    assert (tmp_path / "a.binaryproto").read_bytes() == (tmp_path / "b.binaryproto").read_bytes()


def test_mixed_sizes_name_the_record(tmp_path):
    values = [encode_datum(_images(1)[0], 0), encode_datum(_images(1, (3, 7, 5))[0], 0)]
    with pytest.raises(FormatError, match=r"record '00000001_r' is 3x7x5 but record '00000000_r' is 3x6x5"):
        compute_mean(_kv(tmp_path / "db", "lmdb", values), workers=1, progress=False)


def test_empty_database_is_an_error(tmp_path):
    (tmp_path / "db").mkdir()
    LmdbWriter(tmp_path / "db").close()
    with pytest.raises(DatabaseError, match="no records"):
        compute_mean(tmp_path / "db", progress=False)


def test_binaryproto_is_what_compute_image_mean_writes(tmp_path):
    imgs = _images(4)
    result = compute_mean(_kv(tmp_path / "db", "lmdb", [encode_datum(im, 0) for im in imgs]), progress=False)
    paths = save_mean(result, tmp_path / "mean.binaryproto", also_npy=True)
    assert [p.name for p in paths] == ["mean.binaryproto", "mean.npy"]
    raw = (tmp_path / "mean.binaryproto").read_bytes()
    blob = caffe_pb2.BlobProto.FromString(raw)
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 6, 5) and not blob.HasField("shape")
    assert raw[:8] == bytes([0x08, 0x01, 0x10, 0x03, 0x18, 0x06, 0x20, 0x05])  # header, then packed field 5
    assert raw[8] == 0x2A
    expected = imgs.astype(np.float64).mean(axis=0).astype(np.float32)
    assert np.array_equal(np.array(blob.data, np.float32).reshape(3, 6, 5), expected)
    npy = np.load(tmp_path / "mean.npy")
    assert npy.dtype == np.float32 and npy.shape == (3, 6, 5) and np.array_equal(npy, expected)


def test_real_imagenet_mean_round_trips_bit_exact(tmp_path, shared_data, cli):
    src = shared_data / "means" / "imagenet_mean.binaryproto"
    r = cli("datakit", "mean", "--convert", str(src), str(tmp_path / "m.npy"))
    assert r.returncode == 0, r.stderr
    npy = np.load(tmp_path / "m.npy")
    assert npy.shape == (3, 256, 256) and npy.dtype == np.float32
    reference = np.load(shared_data / "means" / "ilsvrc_2012_mean.npy")
    assert np.array_equal(npy.astype(np.float64), reference)
    np.testing.assert_allclose(npy.reshape(3, -1).mean(axis=1), [104.0070, 116.6688, 122.6789], atol=1e-4)
    r = cli("datakit", "mean", "--convert", str(tmp_path / "m.npy"), str(tmp_path / "back.binaryproto"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back.binaryproto").read_bytes() == src.read_bytes()
    convert_mean(shared_data / "means" / "half_0B_mean.binaryproto", tmp_path / "half.npy")
    convert_mean(tmp_path / "half.npy", tmp_path / "half.binaryproto")
    assert (tmp_path / "half.binaryproto").read_bytes() == (shared_data / "means" / "half_0B_mean.binaryproto").read_bytes()


def test_cli_prints_per_channel_means(tmp_path, cli):
    imgs = _images(3)
    db = _kv(tmp_path / "db", "lmdb", [encode_datum(im, 0) for im in imgs])
    r = cli("datakit", "mean", str(db), str(tmp_path / "out.binaryproto"), "--npy")
    assert r.returncode == 0, r.stderr
    per = imgs.astype(np.float64).reshape(3, 3, -1).mean(axis=(0, 2))
    for c in range(3):
        assert f"mean_value channel [{c}]: {per[c]:.6g}" in r.stdout
    assert (tmp_path / "out.npy").exists()
    r = cli("datakit", "mean", str(tmp_path / "nope"), str(tmp_path / "x.npy"))
    assert r.returncode != 0 and "nope: database not found" in r.stderr


_SLOW_MEAN = """
import sys, time
import datakit.mean.sums as sums
add = sums.RecordSum.add_u8
def slow(self, *args, **kwargs):
    print("summing a record", file=sys.stderr, flush=True)
    time.sleep(0.05)
    return add(self, *args, **kwargs)
sums.RecordSum.add_u8 = slow
from cli.datakit_main import main
sys.argv = ["datakit", *sys.argv[1:]]
sys.exit(main())
"""


@pytest.mark.parametrize("sig, code, line", [("SIGTERM", 143, "datakit: stopped by SIGTERM; no mean was written"),
                                             ("SIGINT", 130, "datakit: interrupted")])
def test_a_stopped_mean_says_so_in_one_line_and_writes_nothing(tmp_path, sig, code, line):
    """`kill PID` (a job scheduler) ended `datakit mean` with no word (exit -15); Ctrl-C said 'interrupted'."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    db = _kv(tmp_path / "db", "lmdb", [encode_datum(im, 0) for im in _images(400)])
    out = tmp_path / "mean.binaryproto"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_MEAN, "mean", str(db), str(out), "--workers", "1",
                             "--no-progress"], cwd=root, env=dict(os.environ, PYTHONPATH=str(root)),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    assert proc.stderr.readline() == "summing a record\n"
    proc.send_signal(getattr(signal, sig))
    rest = [text for text in proc.stderr.read().splitlines() if text != "summing a record"]
    assert proc.wait(timeout=60) == code
    assert rest == [line]
    assert not out.exists()
