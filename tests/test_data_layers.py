"""Data / ImageData / HDF5Data / MemoryData layers: order, wrap, transforms, prefetch, resume."""

from __future__ import annotations

import time

import cv2
import h5py
import numpy as np
import pytest
from google.protobuf import text_format

from datakit.formats.datum import encode_datum, encode_datum_bytes
from datakit.db.lmdb_backend import LmdbWriter
from datakit.errors import ConfigError, DatabaseError
from datakit.formats import caffe_pb2
from datakit.formats.blobproto import write_mean
from trainer.layers import Blob, layer_class
from trainer.rails import longest_label_run

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def make_lmdb(path, n=10, shape=(3, 8, 10), labels=None, encoded=False, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = list(range(n)) if labels is None else labels
    items = []
    for i in range(n):
        if encoded:
            ok, png = cv2.imencode(".png", images[i].transpose(1, 2, 0))
            value = encode_datum_bytes(png.tobytes(), labels[i])
        else:
            value = encode_datum(images[i], labels[i])
        items.append((f"{i:08d}_img{i}.jpg".encode(), value))
    w = LmdbWriter(path)
    w.write(items)
    w.close() if hasattr(w, "close") else None
    return images, labels


def build(text, phase=TRAIN, seed=0, base_dir="."):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    cls = layer_class(lp.type, lp.name)
    layer = cls(lp, phase, np, rng=np.random.default_rng(seed), base_dir=str(base_dir))
    tops = [Blob(np, (), name=t) for t in lp.top]
    layer.setup([], tops)
    layer.reshape([], tops)
    return layer, tops


def data_text(source, batch, transform=""):
    return (f'name: "d" type: "Data" top: "data" top: "label" '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} {transform}')


def step(layer, tops):
    layer.forward([], tops)
    return tops[0].data.copy(), tops[1].data.copy()


def test_data_layer_reads_in_order_and_wraps(tmp_path):
    images, labels = make_lmdb(tmp_path / "db")
    layer, tops = build(data_text(tmp_path / "db", 4))
    assert tops[0].shape == (4, 3, 8, 10) and tops[1].shape == (4,)
    seen = []
    for _ in range(3):
        data, lab = step(layer, tops)
        seen.extend(lab.astype(int).tolist())
        np.testing.assert_array_equal(data[0], images[int(lab[0])])
    assert seen == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    layer.close()


def test_encoded_records_are_decoded_and_transformed(tmp_path):
    images, _ = make_lmdb(tmp_path / "db", encoded=True)
    write_mean(tmp_path / "mean.binaryproto", np.full((3, 8, 10), 100, np.float32))
    tr = f'transform_param {{ crop_size: 6 mean_file: "{tmp_path / "mean.binaryproto"}" scale: 0.5 }}'
    layer, tops = build(data_text(tmp_path / "db", 5, tr), phase=TEST)
    data, lab = step(layer, tops)
    assert data.shape == (5, 3, 6, 6)
    expect = (images[:5, :, 1:7, 2:8].astype(np.float32) - 100) * 0.5  # center crop (8-6)//2, (10-6)//2
    np.testing.assert_allclose(data, expect)
    layer.close()


def test_resume_from_state_gives_the_same_batches(tmp_path):
    make_lmdb(tmp_path / "db", n=7)
    tr = "transform_param { crop_size: 5 mirror: true }"
    a, ta = build(data_text(tmp_path / "db", 3, tr), seed=5)
    run = [step(a, ta) for _ in range(6)]
    b, tb = build(data_text(tmp_path / "db", 3, tr), seed=5)
    for _ in range(2):
        step(b, tb)
    state = b.get_state()
    b.close()
    c, tc = build(data_text(tmp_path / "db", 3, tr), seed=99)
    c.set_state(state)
    for want in run[2:]:
        got = step(c, tc)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    # the random crops really differ between batches
    assert not np.array_equal(run[0][0], run[3][0])
    for layer in (a, c):
        layer.close()


def test_setup_errors(tmp_path):
    make_lmdb(tmp_path / "db")
    with pytest.raises(ConfigError, match="crop_size 9 is larger than the 8x10"):
        build(data_text(tmp_path / "db", 2, "transform_param { crop_size: 9 }"))
    write_mean(tmp_path / "m.binaryproto", np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ConfigError, match="mean_file"):
        build(data_text(tmp_path / "db", 2, f'transform_param {{ mean_file: "{tmp_path / "m.binaryproto"}" }}'))
    with pytest.raises(DatabaseError):
        build(data_text(tmp_path / "nope", 2))


def test_unshuffled_runs_of_one_label_warn(tmp_path):
    make_lmdb(tmp_path / "db", n=300, shape=(1, 2, 2), labels=[0] * 150 + [1] * 150)
    lp = text_format.Parse(data_text(tmp_path / "db", 10), caffe_pb2.LayerParameter())
    layer = layer_class("Data")(lp, TRAIN, np, rng=np.random.default_rng(0))
    warnings = []
    layer.warn = warnings.append
    layer.setup([], [Blob(np), Blob(np)])
    assert len(warnings) == 1 and "150 consecutive records from position 0 all have label 0" in warnings[0]
    assert longest_label_run([1, 1, 2, 2, 2, 1]) == (3, 2, 2)


def test_image_data_shuffle_resize_and_errors(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    lines = []
    for i in range(6):
        img = np.full((12 + i, 9, 3), i * 10, np.uint8)
        cv2.imwrite(str(root / f"{i}.png"), img)
        lines.append(f"{i}.png {i % 3}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    text = ('name: "img" type: "ImageData" top: "data" top: "label" image_data_param { source: "list.txt" '
            'root_folder: "imgs" batch_size: 6 shuffle: true new_height: 8 new_width: 8 }')
    layer, tops = build(text, base_dir=tmp_path)
    d1, l1 = step(layer, tops)
    d2, l2 = step(layer, tops)
    assert d1.shape == (6, 3, 8, 8)
    # each image's value identifies it; every epoch holds each image once, in a shuffled order
    ids1 = d1[:, 0, 0, 0].astype(int) // 10
    ids2 = d2[:, 0, 0, 0].astype(int) // 10
    assert sorted(ids1) == list(range(6)) and sorted(ids2) == list(range(6))
    assert list(ids1) != list(range(6)) or list(ids2) != list(range(6))
    np.testing.assert_array_equal(l1, ids1 % 3)
    layer.close()
    bad = text.replace("new_height: 8 new_width: 8", "")
    with pytest.raises(Exception, match="first image is"):
        layer, tops = build(bad, base_dir=tmp_path)
        step(layer, tops)
    (tmp_path / "evil.txt").write_text("../outside.png 0\n")
    with pytest.raises(Exception, match="escapes"):
        build(text.replace("list.txt", "evil.txt"), base_dir=tmp_path)


def test_hdf5_data_rows_across_files(tmp_path):
    names = []
    for f, rows in enumerate([3, 4]):
        p = tmp_path / f"part{f}.h5"
        with h5py.File(p, "w") as h:
            h["data"] = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2, 1, 1) + 100 * f
            h["label"] = np.arange(rows, dtype=np.float32) + 10 * f
        names.append(p.name)
    (tmp_path / "h5.txt").write_text("\n".join(names) + "\n")
    text = 'name: "h" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "h5.txt" batch_size: 5 }'
    layer, tops = build(text, base_dir=tmp_path)
    _, l1 = step(layer, tops)
    _, l2 = step(layer, tops)
    assert l1.tolist() == [0, 1, 2, 10, 11] and l2.tolist() == [12, 13, 0, 1, 2]
    assert tops[0].shape == (5, 2, 1, 1)
    layer.close()


def test_memory_data(tmp_path):
    text = ('name: "m" type: "MemoryData" top: "data" top: "label" '
            'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 }')
    layer, tops = build(text)
    with pytest.raises(ConfigError, match="reset"):
        step(layer, tops)
    layer.reset(np.arange(12, dtype=np.float32).reshape(3, 1, 2, 2), np.array([0, 1, 2]))
    _, l1 = step(layer, tops)
    _, l2 = step(layer, tops)
    assert l1.tolist() == [0, 1] and l2.tolist() == [2, 0]
    with pytest.raises(ConfigError, match="expected N x 1 x 2 x 2"):
        layer.reset(np.zeros((3, 2, 2, 2)), np.zeros(3))
    layer.close()


def test_leveldb_backend_and_resume_mid_epoch(tmp_path):
    from datakit.db.leveldb_backend import LevelDBWriter
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(5, 1, 3, 3), dtype=np.uint8)
    w = LevelDBWriter(tmp_path / "ldb")
    w.write([(f"{i:08d}_x".encode(), encode_datum(images[i], i)) for i in range(5)])
    w.db.close()
    text = (f'name: "d" type: "Data" top: "data" top: "label" '
            f'data_param {{ source: "{tmp_path / "ldb"}" batch_size: 2 backend: LEVELDB }}')
    layer, tops = build(text)
    labels = [step(layer, tops)[1].tolist() for _ in range(3)]
    assert labels == [[0, 1], [2, 3], [4, 0]]
    layer.set_state({"consumed": 1, "seed": layer.seed})
    assert step(layer, tops)[1].tolist() == [2, 3]
    layer.close()


def test_prefetched_arrays_are_not_overwritten_while_in_use(tmp_path):
    """The output ring recycles buffers: the batch in the top must survive the next prefetches."""
    make_lmdb(tmp_path / "db", n=40)
    layer, tops = build(data_text(tmp_path / "db", 2, "transform_param { scale: 1 crop_size: 4 }"), phase=TEST)
    layer.forward([], tops)
    held = tops[0].data
    snapshot = held.copy()
    time.sleep(0.3)  # let the prefetcher run as far ahead as it may
    np.testing.assert_array_equal(held, snapshot)
    layer.forward([], tops)
    time.sleep(0.3)
    np.testing.assert_array_equal(held, snapshot)  # one forward later: still intact
    layer.close()


def test_hdf5_shuffle_covers_every_row_each_epoch(tmp_path):
    names = []
    for f, rows in enumerate([3, 5]):
        p = tmp_path / f"s{f}.h5"
        with h5py.File(p, "w") as h:
            h["data"] = np.zeros((rows, 1), np.float32)
            h["label"] = np.arange(rows, dtype=np.float32) + 10 * f
        names.append(p.name)
    (tmp_path / "h5.txt").write_text("\n".join(names) + "\n")
    text = ('name: "h" type: "HDF5Data" top: "data" top: "label" '
            'hdf5_data_param { source: "h5.txt" batch_size: 8 shuffle: true }')
    layer, tops = build(text, base_dir=tmp_path)
    epochs = [step(layer, tops)[1].tolist() for _ in range(3)]
    everything = [0, 1, 2, 10, 11, 12, 13, 14]
    assert all(sorted(e) == everything for e in epochs)
    assert any(e != everything for e in epochs)
    layer.close()


def test_records_of_other_layouts_among_raw_ones_are_read_the_same(tmp_path):
    """The Data layer reads raw records through their shared byte layout; records written
    another way (protobuf without `encoded: false`, float_data, a PNG) in the same database
    still give their own pixels and labels, and a record of another size is refused by name."""
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(6, 3, 8, 10), dtype=np.uint8)
    values = [encode_datum(images[i], 300 + i) for i in range(6)]
    values[2] = values[2][:-2]                                   # no `38 00` tail
    d = caffe_pb2.Datum(channels=3, height=8, width=10, label=303)
    d.float_data.extend(images[3].reshape(-1).astype(np.float32).tolist())
    values[3] = d.SerializeToString()                            # float_data
    ok, png = cv2.imencode(".png", images[4].transpose(1, 2, 0))
    values[4] = encode_datum_bytes(png.tobytes(), 304)           # encoded
    w = LmdbWriter(tmp_path / "db")
    w.write([(f"{i:08d}".encode(), v) for i, v in enumerate(values)])
    w.close()
    layer, tops = build(data_text(tmp_path / "db", 6))
    data, lab = step(layer, tops)
    np.testing.assert_array_equal(data, images.astype(np.float32))
    assert lab.astype(int).tolist() == [300, 301, 302, 303, 304, 305]
    layer.close()

    w = LmdbWriter(tmp_path / "bad")
    w.write([(f"{i:08d}".encode(), v) for i, v in enumerate(
        [encode_datum(images[0], 0), encode_datum(images[1][:, :4], 1), encode_datum(images[2], 2)])])
    w.close()
    layer, tops = build(data_text(tmp_path / "bad", 3))
    with pytest.raises(DatabaseError, match=r"record '00000001'.*3x4x10 but the first record is 3x8x10"):
        layer.forward([], tops)
    layer.close()


def test_rand_skip_draws_below_rand_skip_as_caffes_modulo(tmp_path):
    """Caffe skips caffe_rng_rand() % rand_skip records: 0 .. rand_skip-1, so rand_skip: 1 never skips.
    Drawing in 0 .. rand_skip (one too many) skipped a record for about half the seeds."""
    make_lmdb(tmp_path / "db", n=10)
    text = data_text(tmp_path / "db", 2).replace("backend: LMDB", "backend: LMDB rand_skip: RS")
    for seed in range(12):
        layer, tops = build(text.replace("RS", "1"), seed=seed)
        assert layer.skip == 0
        assert step(layer, tops)[1].astype(int).tolist() == [0, 1]
        layer.close()
    skips = set()
    for seed in range(40):
        layer, tops = build(text.replace("RS", "3"), seed=seed)
        skips.add(layer.skip)
        assert step(layer, tops)[1].astype(int).tolist() == [layer.skip, layer.skip + 1]
        layer.close()
    assert skips == {0, 1, 2}


def test_image_data_rand_skip_draws_below_rand_skip(tmp_path):
    """ImageData's rand_skip is Caffe's caffe_rng_rand() % rand_skip too: 0 .. rand_skip-1 lines."""
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(5):
        cv2.imwrite(str(root / f"{i}.png"), np.full((4, 4, 3), i * 10, np.uint8))
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i}\n" for i in range(5)))
    text = ('name: "img" type: "ImageData" top: "data" top: "label" image_data_param { source: "list.txt" '
            'root_folder: "imgs" batch_size: 1 rand_skip: RS }')
    skips = set()
    for seed in range(30):
        layer, tops = build(text.replace("RS", "2"), seed=seed, base_dir=tmp_path)
        skips.add(layer.skip)
        assert step(layer, tops)[1].astype(int).tolist() == [layer.skip]
        layer.close()
    assert skips == {0, 1}
