"""datakit.torch: DataLoader batches equal the trainer's Data layer batches bit for bit."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from datakit.formats.datum import encode_datum
from datakit.db.leveldb_backend import LevelDBWriter
from datakit.errors import DatabaseError
from datakit.formats import caffe_pb2
from datakit.formats.blobproto import write_mean
from datakit.formats.prototxt import parse_net
from tests.conftest import ROOT
from tests.test_data_layers import make_lmdb

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[test]' installs it)")
from torch.utils.data import DataLoader  # noqa: E402

from datakit.torch import CaffeDataset, CaffeIterableDataset, trainer_seed  # noqa: E402
from trainer.net import Net  # noqa: E402

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
N, SHAPE, BATCH = 29, (3, 12, 14), 4   # 29 records: batches wrap around the end mid-batch


def net_text(source, transform, batch=BATCH, backend="LMDB", rand_skip=0):
    skip = f" rand_skip: {rand_skip}" if rand_skip else ""
    return (f'name: "n" layer {{ name: "data" type: "Data" top: "data" top: "label" '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: {backend}{skip} }} {transform} }}')


def trainer_batches(text, n_batches, phase=TRAIN, seed=7):
    with Net(parse_net(text), phase, seed=seed) as net:
        out = []
        for _ in range(n_batches):
            net.forward()
            out.append((net.blob("data").data.copy(), net.blob("label").data.copy()))
    return out


def loader_batches(ds, n_batches, workers):
    dl = DataLoader(ds, batch_size=BATCH, shuffle=False, num_workers=workers)
    out = []
    for data, label in dl:
        out.append((data.numpy(), label.numpy()))
        if len(out) == n_batches:
            break
    return out


def assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for k, ((d1, l1), (d2, l2)) in enumerate(zip(ours, theirs)):
        assert d1.dtype == d2.dtype == np.float32
        assert d1.shape == d2.shape, k
        assert d1.tobytes() == d2.tobytes(), f"batch {k} differs"
        np.testing.assert_array_equal(l1.astype(np.int64), l2.astype(np.int64))


@pytest.fixture(scope="module")
def raw_db(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchdb")
    images, labels = make_lmdb(root / "db", n=N, shape=SHAPE, labels=[i % 5 for i in range(N)])
    rng = np.random.default_rng(3)
    write_mean(root / "mean.binaryproto", rng.uniform(0, 255, SHAPE).astype(np.float32))
    return root


def transform_text(root):
    return f'transform_param {{ crop_size: 9 mirror: true mean_file: "{root / "mean.binaryproto"}" scale: 0.0078125 }}'


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", ["map", "iterable"])
def test_batches_equal_the_trainers_train_phase(raw_db, kind, workers):
    n_batches = 9   # 36 items from 29 records: the wrap and the random crops/flips of 9 batches
    text = net_text(raw_db / "db", transform_text(raw_db))
    theirs = trainer_batches(text, n_batches, seed=7)
    cls = CaffeDataset if kind == "map" else CaffeIterableDataset
    ds = cls(raw_db / "db", transform=transform_text(raw_db).split("{", 1)[1].rsplit("}", 1)[0],
             phase="train", batch_size=BATCH, seed=trainer_seed(7), num_samples=n_batches * BATCH)
    ours = loader_batches(ds, n_batches, workers)
    assert_same(ours, theirs)
    # The mirror and crop were really random: not every batch is the centre crop unflipped.
    centre = CaffeDataset(raw_db / "db", transform={"crop_size": 9, "mean_file": str(raw_db / "mean.binaryproto"),
                                                    "scale": 0.0078125}, phase="test", batch_size=BATCH)
    assert ours[0][0].tobytes() != loader_batches(centre, 1, 0)[0][0].tobytes()


def test_from_net_reads_source_transform_and_rand_skip(raw_db):
    text = net_text(raw_db / "db", transform_text(raw_db), rand_skip=11)
    (raw_db / "train.prototxt").write_text(text)
    theirs = trainer_batches(text, 5, seed=123)
    ds = CaffeDataset.from_net(raw_db / "train.prototxt", random_seed=123, iterations=5)
    assert ds.skip > 0 and len(ds) == 5 * BATCH
    assert_same(loader_batches(ds, 5, 0), theirs)


def test_test_phase_centre_crop_and_different_seed_differs(raw_db):
    text = net_text(raw_db / "db", transform_text(raw_db))
    theirs = trainer_batches(text, 3, phase=TEST)
    tr = {"crop_size": 9, "mirror": True, "mean_file": str(raw_db / "mean.binaryproto"), "scale": 0.0078125}
    assert_same(loader_batches(CaffeDataset(raw_db / "db", transform=tr, phase="test", batch_size=BATCH), 3, 0), theirs)
    train = trainer_batches(text, 2, seed=7)
    wrong = CaffeDataset(raw_db / "db", transform=tr, batch_size=BATCH, seed=trainer_seed(8))
    assert loader_batches(wrong, 2, 0)[0][0].tobytes() != train[0][0].tobytes()


def test_encoded_records_and_no_transform(tmp_path):
    make_lmdb(tmp_path / "enc", n=10, shape=(3, 8, 10), encoded=True)
    text = net_text(tmp_path / "enc", 'transform_param { crop_size: 6 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 }')
    theirs = trainer_batches(text, 4, seed=1)
    ds = CaffeIterableDataset(tmp_path / "enc", transform="crop_size: 6 mirror: true mean_value: 104 mean_value: 117 mean_value: 123",
                              batch_size=BATCH, seed=trainer_seed(1), num_samples=16)
    assert_same(loader_batches(ds, 4, 2), theirs)
    plain = CaffeDataset(tmp_path / "enc")
    image, label = plain[3]
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, 8, 10) and label == 3
    ours = loader_batches(plain, 2, 0)
    plain.close()   # one LMDB environment per process: the trainer's Net opens it next
    assert_same(ours, trainer_batches(net_text(tmp_path / "enc", ""), 2))


def test_shuffled_map_dataset_gives_the_same_items(raw_db):
    ds = CaffeDataset(raw_db / "db", batch_size=BATCH)
    dl = DataLoader(ds, batch_size=5, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0))
    labels = sorted(int(v) for _, lab in dl for v in lab)
    assert labels == sorted(i % 5 for i in range(N))


def leveldb(path, n=10, shape=(3, 8, 10)):
    rng = np.random.default_rng(0)
    w = LevelDBWriter(path)
    w.write([(f"{i:08d}_x".encode(), encode_datum(rng.integers(0, 256, shape, dtype=np.uint8), i)) for i in range(n)])
    w.close()


def test_leveldb_one_worker_matches_and_two_workers_fail_clearly(tmp_path):
    leveldb(tmp_path / "ldb")
    text = net_text(tmp_path / "ldb", "transform_param { crop_size: 5 mirror: true }", backend="LEVELDB")
    theirs = trainer_batches(text, 3, seed=2)
    for workers in (0, 1):
        ds = CaffeDataset(tmp_path / "ldb", transform={"crop_size": 5, "mirror": True}, batch_size=BATCH,
                          seed=trainer_seed(2), num_samples=12)
        assert_same(loader_batches(ds, 3, workers), theirs)
    ds = CaffeIterableDataset(tmp_path / "ldb", batch_size=BATCH)
    with pytest.raises(DatabaseError, match="LevelDB allows one process at a time.*2 workers"):
        loader_batches(ds, 1, 2)


def test_hdf5_rows_as_float_tensors(tmp_path):
    data = np.random.default_rng(0).normal(size=(7, 2, 3, 3)).astype(np.float32)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = data
        f["label"] = np.arange(7, dtype=np.float32)
    for cls in (CaffeDataset, CaffeIterableDataset):
        got = loader_batches(cls(tmp_path / "a.h5", batch_size=BATCH), 2, 0)
        np.testing.assert_array_equal(got[0][0], data[:4])
        np.testing.assert_array_equal(got[1][1], [4, 5, 6])


def test_bad_transform_field_is_one_clear_error(raw_db):
    from datakit.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown field 'crop'"):
        CaffeDataset(raw_db / "db", transform={"crop": 3})
    with pytest.raises(ConfigError, match="crop_size 40 is larger"):
        CaffeDataset(raw_db / "db", transform={"crop_size": 40})


def test_import_datakit_without_torch():
    """`import datakit` (and the db readers) must work where torch cannot be imported."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import datakit, datakit.db, datakit.datum\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "try:\n    import datakit.torch\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'datakit[torch]'" in out.stdout


def test_spawned_workers_pickle_the_dataset(raw_db):
    """macOS / Windows start workers by spawning: the dataset travels pickled, without open handles."""
    tr = transform_text(raw_db).split("{", 1)[1].rsplit("}", 1)[0]
    ds = CaffeDataset(raw_db / "db", transform=tr, batch_size=BATCH, seed=trainer_seed(7), num_samples=3 * BATCH)
    first = ds[0]   # opens the database in this process before the workers start
    dl = DataLoader(ds, batch_size=BATCH, num_workers=1, multiprocessing_context="spawn")  # one: each spawn imports torch
    spawned = [(d.numpy(), l.numpy()) for d, l in dl]
    assert_same(spawned, loader_batches(ds, 3, 0))
    assert first[0].numpy().tobytes() == spawned[0][0][0].tobytes()


def test_a_dataset_and_a_data_layer_share_one_lmdb_in_one_process(tmp_path):
    # LMDB opens an environment once per process: both read through datakit.db.shared's one reader
    from tests.test_data_layers import build, data_text
    make_lmdb(tmp_path / "db", n=10)
    ds = CaffeDataset(tmp_path / "db")
    image, _ = ds[0]
    layer, tops = build(data_text(str(tmp_path / "db"), 4))
    try:
        layer.forward([], tops)
        assert tops[0].data.shape == (4, *image.shape)
        assert ds[1][0].shape == image.shape      # the dataset still reads after the layer opened it
    finally:
        layer.close()
        ds.close()


@pytest.mark.parametrize("kind", ["map", "iterable"])
def test_forked_workers_after_the_parent_read_the_lmdb(raw_db, kind):
    """A notebook looks at ds[0], then loads with forked workers: each worker must open its own LMDB.

    py-lmdb's registry of open environments survives fork; the worker used to be refused with
    "The environment ... is already open in this process".
    """
    cls = CaffeDataset if kind == "map" else CaffeIterableDataset
    ds = cls(raw_db / "db", batch_size=BATCH, num_samples=3 * BATCH)
    look = CaffeDataset(raw_db / "db")
    try:
        first = look[0]   # the parent now holds the database open (shared by both datasets)
        dl = DataLoader(ds, batch_size=BATCH, num_workers=2, multiprocessing_context="fork")
        forked = [(d.numpy(), l.numpy()) for d, l in dl]
        assert_same(forked, loader_batches(ds, 3, 0))
        assert first[0].numpy().tobytes() == forked[0][0][0].tobytes()
        assert look[1][0].shape == first[0].shape   # the parent's reader still works
    finally:
        look.close()
        ds.close()
