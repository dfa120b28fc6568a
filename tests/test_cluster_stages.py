"""The data stages on a real Dask LocalCluster (scheduler + 2 worker processes on 127.0.0.1): same outputs as local.

mean: byte-identical .binaryproto; convert: shards holding the local records under the local keys, read
as one database, merged into the local bytes, atomic and resumable; faults: a worker SIGKILLed mid-partition.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from datakit.convert import ConvertOptions, convert
from datakit.db import detect_backend, open_reader
from datakit.errors import DatabaseError
from datakit.mean import compute_mean, save_mean

distributed = pytest.importorskip("distributed", reason="the dist extra (dask.distributed) is not installed")

from datakit.cluster import DaskExecutor  # noqa: E402
from datakit.convert.merge import merge_shards  # noqa: E402
from datakit.convert.sharded import convert_sharded, write_shard  # noqa: E402
from tests.ctrl_c import ctrl_c_when  # noqa: E402
from tests.test_convert import make_images, write_list  # noqa: E402


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    entries = make_images(root, 60, size=(12, 16))
    entries.insert(7, ("sub/missing.png", 1))  # a skipped image leaves a gap in the indices, as locally
    return root / "img", write_list(root / "list.txt", entries)


def _opts(**kw) -> ConvertOptions:
    return ConvertOptions(**({"workers": 1, "progress": False} | kw))


def _records(db: Path) -> list[tuple[bytes, bytes]]:
    with open_reader(db) as reader:
        return [(bytes(k), bytes(v)) for k, v in reader.raw_items()]


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_convert_on_the_cluster_writes_shards_of_the_local_records_and_merges_to_the_local_bytes(
        tmp_path, dask2, images, backend):
    root, lst = images
    local = tmp_path / "local"
    convert(root, lst, local, _opts(backend=backend, resize_height=10, resize_width=12), warn=lambda m: None)
    warned: list[str] = []
    summary = convert_sharded(root, lst, tmp_path / "db", _opts(backend=backend, resize_height=10, resize_width=12),
                              dask2, partition_size=16, warn=warned.append)
    db = tmp_path / "db"
    index = json.loads((db / "shards.json").read_text())
    assert [s["name"] for s in index["shards"]] == [f"shard-{k:05d}" for k in range(4)]
    assert [(s["first_index"], s["next_index"]) for s in index["shards"]] == [(0, 16), (16, 32), (32, 48), (48, 61)]
    assert [s["count"] for s in index["shards"]] == [15, 16, 16, 13] and summary.written == 60
    assert [s.path for s in summary.skipped] == ["sub/missing.png"] and "sub/missing.png" in warned[0]
    assert not [p for p in db.iterdir() if p.name.startswith(".")]  # no temporaries left
    expected = _records(local)
    by_shard = []
    for shard in index["shards"]:
        got = _records(db / shard["name"])
        assert got[0][0].decode() == shard["first_key"] and got[-1][0].decode() == shard["last_key"]
        by_shard += got
    assert dict(by_shard) == dict(expected)
    # the registry reads the shards as one database, in key order
    assert detect_backend(db) == "sharded"
    with open_reader(db) as reader:
        assert len(reader) == 60 and [(bytes(k), bytes(v)) for k, v in reader.raw_items()] == expected
        assert reader.seek(20) == expected[20][0]
        assert [k for k, _ in reader.raw_items(expected[14][0], expected[33][0])] == [k for k, _ in expected[14:33]]
    # merge: the single database of the local run (for LMDB, its data.mdb byte for byte)
    assert merge_shards(db, tmp_path / "merged") == 60
    assert detect_backend(tmp_path / "merged") == backend and _records(tmp_path / "merged") == expected
    if backend == "lmdb":
        assert (tmp_path / "merged" / "data.mdb").read_bytes() == (local / "data.mdb").read_bytes()


def test_mean_and_inspect_on_the_cluster_match_the_local_ones(tmp_path, dask2, cli):
    imgs = np.random.default_rng(3).integers(0, 256, (700, 3, 6, 5), dtype=np.uint8)
    imgs[:300] = 255
    from datakit.db.lmdb_backend import LmdbWriter
    from datakit.formats.datum import encode_datum
    writer = LmdbWriter(tmp_path / "db")
    writer.write([(f"{i:08d}_r".encode(), encode_datum(im, i % 5)) for i, im in enumerate(imgs)])
    writer.close()
    local = compute_mean(tmp_path / "db", workers=1, progress=False)
    there = compute_mean(tmp_path / "db", executor=dask2, progress=False)
    assert there.count == local.count == 700
    save_mean(local, tmp_path / "local.binaryproto")
    save_mean(there, tmp_path / "there.binaryproto")
    assert (tmp_path / "local.binaryproto").read_bytes() == (tmp_path / "there.binaryproto").read_bytes()
    # the command line, on a LocalCluster of its own
    r = cli("datakit", "mean", str(tmp_path / "db"), str(tmp_path / "cli.binaryproto"), "--cluster", "local:2",
            "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cli.binaryproto").read_bytes() == (tmp_path / "local.binaryproto").read_bytes()
    # and through --scheduler, on this module's cluster, as a user's `dask scheduler` would be reached
    address = dask2.client.scheduler.address
    r = cli("datakit", "mean", str(tmp_path / "db"), str(tmp_path / "sched.binaryproto"), "--scheduler", address,
            "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sched.binaryproto").read_bytes() == (tmp_path / "local.binaryproto").read_bytes()


def test_mean_inspect_and_cli_read_a_sharded_database_as_one(tmp_path, dask2, images, cli):
    root, lst = images
    convert(root, lst, tmp_path / "local", _opts(resize_height=10, resize_width=12), warn=lambda m: None)
    r = cli("datakit", "convert", str(root), str(lst), str(tmp_path / "db"), "--resize-height", "10",
            "--resize-width", "12", "--cluster", "local:2", "--partition-size", "20", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "60 records written (sharded" in r.stdout
    local, sharded = (compute_mean(tmp_path / d, workers=1, progress=False) for d in ("local", "db"))
    assert local.count == sharded.count == 60 and np.array_equal(local.mean, sharded.mean)
    a = cli("datakit", "inspect", str(tmp_path / "local"), "--json")
    b = cli("datakit", "inspect", str(tmp_path / "db"), "--json")
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert jb["backend"] == "sharded" and {k: v for k, v in ja.items() if k not in ("path", "backend")} == \
        {k: v for k, v in jb.items() if k not in ("path", "backend")}
    m = cli("datakit", "merge", str(tmp_path / "db"), str(tmp_path / "one"))
    assert m.returncode == 0 and "60 records" in m.stdout
    assert (tmp_path / "one" / "data.mdb").read_bytes() == (tmp_path / "local" / "data.mdb").read_bytes()
    again = cli("datakit", "convert", str(root), str(lst), str(tmp_path / "db"), "--resize-height", "10",
                "--resize-width", "12", "--cluster", "local:1", "--resume", "--no-progress")
    assert again.returncode == 0 and "already complete" in again.stdout


def test_a_rerun_skips_finished_shards_and_a_shard_is_never_half_there(tmp_path, dask2, images):
    root, lst = images
    db = tmp_path / "db"
    convert_sharded(root, lst, db, _opts(), dask2, partition_size=16, warn=lambda m: None)
    expected = _records(db)
    # an interrupted run: two shards finished, a killed task's temporary left behind, no shards.json
    work = tmp_path / "db2.incomplete"
    os.rename(db, work)
    for name in ("shard-00001", "shard-00003", "shards.json"):
        path = work / name
        os.rename(path, work / f".{name}.tmp-1-dead") if path.is_dir() else path.unlink()
    progress = json.loads((work / "datakit-convert.json").read_text()) | {"status": "incomplete"}
    (work / "datakit-convert.json").write_text(json.dumps(progress))
    kept = {n: (work / n / "data.mdb").stat().st_ino for n in ("shard-00000", "shard-00002")}
    with pytest.raises(DatabaseError, match="pass --resume"):
        convert_sharded(root, lst, tmp_path / "db2", _opts(), dask2, partition_size=16)
    summary = convert_sharded(root, lst, tmp_path / "db2", _opts(resume=True), dask2, partition_size=16,
                              warn=lambda m: None)
    assert summary.written == 60 and summary.resumed_at == 31
    db2 = tmp_path / "db2"
    assert {n: (db2 / n / "data.mdb").stat().st_ino for n in kept} == kept  # not written twice
    assert not [p for p in db2.iterdir() if p.name.startswith(".")]
    assert _records(db2) == expected


def test_write_shard_is_idempotent(tmp_path, images):
    from datakit.convert.encode import EncodeSpec
    root, lst = images
    spec = EncodeSpec(str(root), "datum", 0, 0, False, False, "", False, 10_000_000)
    rows = [(i, i + 1, f"sub/im {i}.{'png' if i % 2 == 0 else 'jpg'}", i % 3) for i in range(5)]
    first = write_shard(spec, "lmdb", rows, str(tmp_path), 0)
    ino = (tmp_path / "shard-00000" / "data.mdb").stat().st_ino
    assert write_shard(spec, "lmdb", rows, str(tmp_path), 0) == first
    assert (tmp_path / "shard-00000" / "data.mdb").stat().st_ino == ino and first["count"] == 5


def slow_encode_batch(*args, **kwargs):
    """encode_batch, but the first task anywhere to reach it records its pid and waits to be killed."""
    from datakit.convert import encode
    marker = Path(os.environ["DATAKIT_TEST_MARKER"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(60)
    return encode.encode_batch(*args, **kwargs)


def _install_slow_encoder(marker: str) -> None:
    os.environ["DATAKIT_TEST_MARKER"] = marker
    import datakit.convert.partition as partition
    partition.encode_batch = slow_encode_batch


def test_a_worker_killed_mid_partition_leaves_the_same_database(tmp_path, dask2, images):
    root, lst = images
    local = tmp_path / "local"
    convert(root, lst, local, _opts(), warn=lambda m: None)
    marker = tmp_path / "pid"
    dask2.client.run(_install_slow_encoder, str(marker))
    try:
        killed = []

        def kill_when_marked() -> None:
            deadline = time.time() + 60
            while not marker.exists() and time.time() < deadline:
                time.sleep(0.05)
            pid = int(marker.read_text())
            assert pid in dask2.worker_pids().values()  # picked by its pid from the cluster
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        import threading
        watcher = threading.Thread(target=kill_when_marked, daemon=True)
        watcher.start()
        summary = convert_sharded(root, lst, tmp_path / "db", _opts(), dask2, partition_size=16,
                                  warn=lambda m: None)
        watcher.join()
    finally:
        dask2.client.run(_restore_encoder)
    assert killed and summary.written == 60
    assert killed[0] not in dask2.worker_pids().values()
    assert _records(tmp_path / "db") == _records(local)
    assert not [p for p in (tmp_path / "db").iterdir() if p.name.startswith(".")]


def _restore_encoder() -> None:
    from datakit.convert import encode
    import datakit.convert.partition as partition
    partition.encode_batch = encode.encode_batch


def always_dies(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_partition_that_keeps_killing_its_worker_fails_naming_it(tmp_path, images):
    import dask
    root, lst = images
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            DaskExecutor(local_workers=1, retries=0) as ex:
        ex.client.run(_install_killer)
        with pytest.raises(DatabaseError, match=r"partition \d \(shard-0000\d, list records \d+\.\.\d+\) failed on "
                                                r"dask: KilledWorker"):
            convert_sharded(root, lst, tmp_path / "db", _opts(), ex, partition_size=30)
    assert (tmp_path / "db.incomplete").is_dir() and not (tmp_path / "db").exists()


def _install_killer() -> None:
    import datakit.convert.partition as partition
    partition.encode_batch = always_dies


def test_the_trainer_data_layer_reads_a_sharded_database_as_the_local_one(tmp_path, dask2, images):
    from google.protobuf import text_format

    from datakit.formats import caffe_pb2
    from tests.test_data_layers import TRAIN, build, data_text, step
    from trainer.layers import Blob, layer_class
    root, lst = images
    convert(root, lst, tmp_path / "local", _opts(resize_height=10, resize_width=12), warn=lambda m: None)
    convert_sharded(root, lst, tmp_path / "db", _opts(resize_height=10, resize_width=12), dask2,
                    partition_size=16, warn=lambda m: None)
    batches = []
    for db in ("local", "db"):
        layer, tops = build(data_text(tmp_path / db, 7))
        batches.append([step(layer, tops) for _ in range(10)])  # 70 records: past the end, wrapping
        layer.close()
    for (da, la), (db_, lb) in zip(*batches):
        np.testing.assert_array_equal(da, db_)
        np.testing.assert_array_equal(la, lb)
    # backend: LMDB names the shards' backend: no warning; LEVELDB is wrong and is told so
    for backend, expected in (("LMDB", []), ("LEVELDB", ["is sharded lmdb; reading it as sharded lmdb"])):
        lp = text_format.Parse(data_text(tmp_path / "db", 7).replace("LMDB", backend), caffe_pb2.LayerParameter())
        layer = layer_class("Data")(lp, TRAIN, np, rng=np.random.default_rng(0))
        warnings: list[str] = []
        layer.warn = warnings.append
        layer.setup([], [Blob(np), Blob(np)])
        layer.close()
        assert len(warnings) == len(expected) and all(e in w for e, w in zip(expected, warnings)), warnings


def slow_encode(*args, **kwargs):
    from datakit.convert import encode
    time.sleep(0.3)
    return encode.encode_batch(*args, **kwargs)


def _install_slow() -> None:
    import datakit.convert.partition as partition
    partition.encode_batch = slow_encode


def test_ctrl_c_cancels_the_shards_left_and_resume_finishes(tmp_path, dask2, images):
    from datakit.convert import ConvertInterrupted
    root, lst = images
    db = tmp_path / "db"
    work = tmp_path / "db.incomplete"
    dask2.client.run(_install_slow)
    try:
        with ctrl_c_when(lambda: work.is_dir() and any(p.name.startswith("shard-") for p in work.iterdir())), \
                pytest.raises(ConvertInterrupted, match="--resume"):
            convert_sharded(root, lst, db, _opts(), dask2, partition_size=4, warn=lambda m: None)
    finally:
        dask2.client.run(_restore_encoder)
    finished = sorted(p.name for p in work.iterdir() if p.name.startswith("shard-"))
    assert 1 <= len(finished) < 16 and not db.exists()
    time.sleep(1.0)  # tasks already running on a worker finish there
    summary = convert_sharded(root, lst, db, _opts(resume=True), dask2, partition_size=4, warn=lambda m: None)
    assert summary.written == 60 and summary.resumed_at
    convert(root, lst, tmp_path / "local", _opts(), warn=lambda m: None)
    assert _records(db) == _records(tmp_path / "local")


def test_a_bad_image_under_strict_on_a_local_cluster_is_one_line(tmp_path, cli):
    """`datakit convert --strict --cluster local:2`: the bad image's list line, once, as locally:
    no worker traceback or Dask warning (about the sibling partition it cancels) in the terminal,
    and the database left as .incomplete for --resume."""
    entries = make_images(tmp_path, 40, size=(120, 160))
    (tmp_path / "img" / entries[1][0]).write_bytes(b"not an image at all")
    listing = write_list(tmp_path / "list.txt", entries)
    r = cli("datakit", "convert", str(tmp_path / "img"), str(listing), str(tmp_path / "db"), "--strict",
            "--no-progress", "--cluster", "local:2", "--partition-size", "4")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"datakit: error: {listing}:2: {entries[1][0]}: cannot be decoded as "
                                     "an image (--strict)"], r.stderr
    assert (tmp_path / "db.incomplete").is_dir() and not (tmp_path / "db").exists()


def test_a_careless_list_on_the_cluster_warns_as_locally(tmp_path, dask2):
    """Thousands of duplicate lines and missing files: the cluster's terminal shows what the local
    run shows (the first few of each kind, then a count), and its summary keeps every list warning."""
    entries = make_images(tmp_path, 6, size=(12, 16))
    careless = entries * 5 + [(f"sub/gone {i}.png", 0) for i in range(14)]
    listing = write_list(tmp_path / "list.txt", careless)
    local: list[str] = []
    convert(tmp_path / "img", listing, tmp_path / "local", _opts(), warn=local.append)
    cluster: list[str] = []
    summary = convert_sharded(tmp_path / "img", listing, tmp_path / "db", _opts(), dask2, partition_size=8,
                              warn=cluster.append)
    assert cluster == local and len(cluster) < 30
    assert "... and 14 more list warnings (24 in all" in " ".join(cluster)
    assert "... and 4 more skipped images (14 in all" in " ".join(cluster)
    assert len(summary.warnings) == 24 and len(summary.skipped) == 14


def test_a_relative_root_on_workers_started_elsewhere(tmp_path, dask2, monkeypatch):
    """A relative ROOT from a client in another folder than the workers (`dask worker` started
    elsewhere): every image was 'file not found' on the workers and nothing was written."""
    entries = make_images(tmp_path, 10, size=(12, 16))
    write_list(tmp_path / "list.txt", entries)
    monkeypatch.chdir(tmp_path)
    summary = convert_sharded("img", "list.txt", "db", _opts(), dask2, partition_size=4, warn=lambda m: None)
    assert summary.written == 10 and not summary.skipped
    assert (tmp_path / "db" / "shards.json").is_file()


def test_mean_of_a_relative_database_on_workers_started_elsewhere(tmp_path, dask2, monkeypatch):
    """`datakit mean train_lmdb mean.binaryproto --scheduler ...` from another folder than the
    workers': the key ranges were read from a relative path there ("cannot open LMDB")."""
    from datakit.db.lmdb_backend import LmdbWriter
    from datakit.formats.datum import encode_datum
    rng = np.random.default_rng(0)
    writer = LmdbWriter(tmp_path / "train_lmdb")
    writer.write([(f"{i:08d}_{i}.png".encode(), encode_datum(rng.integers(0, 256, (3, 4, 5), dtype=np.uint8), 0))
                  for i in range(600)])    # enough for key ranges on the workers (below, the client reads)
    writer.close()
    monkeypatch.chdir(tmp_path)
    here = compute_mean("train_lmdb", workers=1, progress=False)
    there = compute_mean("train_lmdb", executor=dask2, progress=False)
    assert there.count == 600 and np.array_equal(there.mean, here.mean)
