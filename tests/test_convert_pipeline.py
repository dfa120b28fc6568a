"""datakit.convert.pipeline: how records travel from the workers to the writer (shared memory, its
fallbacks) and when checkpoints are saved. The arena and the checkpoints are reached through
PipelineSettings and convert's on_progress_saved, never through private names.

Whatever way a record takes (written in place in a shared-memory slot, sent
through the pipe because it did not fit or no slot was free), the database
must hold the same bytes as a single-process conversion.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from datakit.arena import SharedArena
from datakit.convert import ConvertOptions, convert
from datakit.convert.pipeline import PipelineSettings
from datakit.formats.datum import encode_datum, raw_datum_parts
from datakit.db import PROGRESS_NAME, open_reader
from datakit.db.lmdb_backend import LmdbWriter
from datakit.formats import caffe_pb2

from tests.test_convert import make_images, write_list


def _opts(**kw) -> ConvertOptions:
    kw.setdefault("progress", False)
    return ConvertOptions(**kw)


def _items(db) -> list[tuple[bytes, bytes]]:
    with open_reader(db) as reader:
        return list(reader.raw_items())


@pytest.mark.parametrize("shape,label", [((3, 5, 7), 0), ((1, 4, 4), 19), ((3, 130, 1), -2), ((4, 2, 300), 1 << 20)])
def test_raw_datum_parts_frame_the_pixels_as_protobuf_does(shape, label):
    pixels = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    prefix, suffix = raw_datum_parts(*shape, label)
    d = caffe_pb2.Datum(channels=shape[0], height=shape[1], width=shape[2], data=pixels.tobytes(), label=label,
                        encoded=False)
    assert prefix + pixels.tobytes() + suffix == encode_datum(pixels, label) == d.SerializeToString()


@pytest.mark.parametrize("extra", [{}, {"gray": True}, {"encoded": True, "encode_type": "png"},
                                   {"backend": "leveldb"}, {"backend": "hdf5", "resize_height": 30,
                                                            "resize_width": 40}])
def test_small_slots_and_records_that_do_not_fit_give_the_same_database(tmp_path, extra):
    # 8 KB slots: the 24x32 records fit (several per slot), the 60x80 ones (14 KB raw) never do.
    entries = make_images(tmp_path, 30, size=(24, 32))
    big = make_images(tmp_path / "big", 10, size=(60, 80), seed=1)
    for rel, _ in big:
        (tmp_path / "img" / "sub" / ("big " + rel.split("/")[-1])).write_bytes((tmp_path / "big" / "img" / rel).read_bytes())
    entries += [("sub/big " + rel.split("/")[-1], label) for rel, label in big]
    entries = [entries[i] for i in np.random.default_rng(2).permutation(len(entries))]
    lst = write_list(tmp_path / "list.txt", entries)
    convert(tmp_path / "img", lst, tmp_path / "one", _opts(workers=1, **extra))
    convert(tmp_path / "img", lst, tmp_path / "two", _opts(workers=2, commit_every=3, **extra),
            settings=PipelineSettings(slot_bytes=8 << 10))
    if extra.get("backend") == "hdf5":
        with open_reader(tmp_path / "one") as a, open_reader(tmp_path / "two") as b:
            ra, rb = list(a), list(b)
        assert len(ra) == len(rb) == 40
        assert all(x.label == y.label and np.array_equal(x.image, y.image) for x, y in zip(ra, rb))
    else:
        assert _items(tmp_path / "two") == _items(tmp_path / "one")
        assert len(_items(tmp_path / "two")) == 40


def test_a_slow_writer_leaves_no_slot_free_and_records_take_the_pipe(tmp_path, monkeypatch):
    entries = make_images(tmp_path, 60, size=(40, 50))
    lst = write_list(tmp_path / "list.txt", entries)
    convert(tmp_path / "img", lst, tmp_path / "one", _opts(workers=1))

    starved = []

    class CountingArena(SharedArena):
        def acquire(self):
            slot = super().acquire()
            starved.append(slot is None)
            return slot

    write = LmdbWriter.write

    def slow_write(self, items):
        import time
        time.sleep(0.03)
        return write(self, items)

    monkeypatch.setattr(LmdbWriter, "write", slow_write)
    # only as many slots as tasks in flight
    settings = PipelineSettings(spare_slots=0, batch=1, max_batch=2, arena_factory=CountingArena)
    convert(tmp_path / "img", lst, tmp_path / "two", _opts(workers=2, commit_every=2), settings=settings)
    assert any(starved), "the writer never held every slot; the fallback was not exercised"
    assert not all(starved)
    assert _items(tmp_path / "two") == _items(tmp_path / "one")


def test_progress_is_saved_at_checkpoints_not_every_transaction(tmp_path, monkeypatch):
    entries = make_images(tmp_path, 23)
    lst = write_list(tmp_path / "list.txt", entries)
    saved: list[int] = []
    synced: list[int] = []

    sync = LmdbWriter.sync

    def recording_sync(self):
        with self.env.begin() as txn:
            synced.append(txn.stat()["entries"])
        sync(self)

    write = LmdbWriter.write
    writes = [0]

    def paced_write(self, items):
        # Wait until the checkpoint thread has saved every checkpoint asked for so far (one per 3
        # commits, after the empty start), so that none is merged into a later one however slow
        # the disk's flush is; a fixed sleep here made the test flaky.
        import time
        deadline = time.monotonic() + 30
        while len(saved) < 1 + writes[0] // 3 and time.monotonic() < deadline:
            time.sleep(0.002)
        writes[0] += 1
        return write(self, items)

    monkeypatch.setattr(LmdbWriter, "sync", recording_sync)
    monkeypatch.setattr(LmdbWriter, "write", paced_write)
    convert(tmp_path / "img", lst, tmp_path / "db", _opts(workers=1, commit_every=2, checkpoint_every=3),
            on_progress_saved=lambda state: saved.append(state["written"]))
    # a checkpoint every 3 x 2 records, then the final one; the first save is the empty start
    assert saved[:5] == [0, 6, 12, 18, 23]
    # each checkpoint's records were flushed before the progress file claimed them
    assert all(any(s >= n for s in synced) for n in saved)
    assert json.loads((tmp_path / "db" / PROGRESS_NAME).read_text())["status"] == "complete"


def test_reserved_disk_blocks_are_given_back_on_close(tmp_path):
    entries = make_images(tmp_path, 12)
    lst = write_list(tmp_path / "list.txt", entries)
    convert(tmp_path / "img", lst, tmp_path / "db", _opts(workers=2))
    data = (tmp_path / "db" / "data.mdb").stat()
    # 12 records of ~2.5 KB: the file is cut to its used pages, and so are the blocks reserved ahead
    assert data.st_size < 256 << 10
    assert data.st_blocks * 512 < 1 << 20
    assert len(_items(tmp_path / "db")) == 12


@pytest.mark.parametrize("path", ["a/b.jpg", "im 1.png", "../x.jpg", "a/../../b", "/abs.jpg", "\\\\srv\\x.jpg",
                                  "C:x.jpg", "c:/x.jpg", "", "..", "a/..", "a\\..\\..\\b", "...jpg", "x..y/z.jpg"])
def test_the_fast_path_check_accepts_only_what_safe_join_accepts(path):
    from datakit.errors import ListError
    from datakit.imagelist import plainly_inside as _plainly_inside
    from datakit.imagelist import safe_join
    try:
        safe_join("/root", path)
        safe = True
    except ListError:
        safe = False
    if _plainly_inside(path):
        assert safe, path
    if path in ("a/b.jpg", "im 1.png"):
        assert _plainly_inside(path)


@pytest.mark.parametrize("backend", ["lmdb", "hdf5"])
def test_partitions_run_on_an_executor_hold_the_single_database(tmp_path, backend):
    """convert_partition: records a..b into a shard each, through the Executor seam (pickled to worker
    processes); the shards, in order, hold the records and keys of the one database convert() writes."""
    from datakit.convert.encode import EncodeSpec
    from datakit.convert.partition import convert_partitions
    from datakit.imagelist import read_list
    from datakit.parallel import InlineExecutor, LocalExecutor

    entries = make_images(tmp_path, 25, size=(24, 32))
    entries.insert(7, ("sub/missing.png", 1))
    lst = write_list(tmp_path / "list.txt", entries)
    resize = dict(resize_height=20, resize_width=30)
    convert(tmp_path / "img", lst, tmp_path / "one", _opts(backend=backend, workers=1, **resize))
    rows = [(i, e.line, e.path, e.label) for i, e in enumerate(read_list(lst, allow_label_gaps=True))]
    kind = "array" if backend == "hdf5" else "datum"
    spec = EncodeSpec(str(tmp_path / "img"), kind, 20, 30, False, False, "", False, 40_000_000)
    for name, executor in (("local", LocalExecutor(2)), ("inline", InlineExecutor())):
        with executor:
            shards = convert_partitions(executor, spec, backend, rows, tmp_path / name, per_partition=6,
                                        list_name=str(lst), commit_every=4, shard_records=4)
        assert [(s.first_index, s.next_index) for s in shards] == [(a, min(26, a + 6)) for a in range(0, 26, 6)]
        assert sum(s.written for s in shards) == 25
        assert [k.index for s in shards for k in s.skipped] == [7]
        if backend == "hdf5":
            with open_reader(tmp_path / "one") as one:
                want = [(r.label, r.image.tobytes()) for r in one]
            got = []
            for s in shards:
                with open_reader(s.shard) as r:
                    got += [(rec.label, rec.image.tobytes()) for rec in r]
        else:
            want = _items(tmp_path / "one")
            got = [item for s in shards for item in _items(s.shard)]
        assert got == want


def test_ctrl_c_raises_convert_interrupted_naming_what_is_saved(tmp_path):
    """SIGINT mid-run: exit 130 and one line naming the records saved and --resume, which then finishes the job."""
    import os
    import signal
    import subprocess
    import sys

    from datakit.db import incomplete_path
    from tests.conftest import wait_until_written, ROOT

    entries = make_images(tmp_path, 400, size=(120, 160))
    lst = write_list(tmp_path / "list.txt", entries)
    cmd = [sys.executable, "-m", "cli.datakit_main", "convert", str(tmp_path / "img"), str(lst), str(tmp_path / "db"),
           "--workers", "1", "--commit-every", "5", "--checkpoint-every", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    progress = incomplete_path(tmp_path / "db") / PROGRESS_NAME
    wait_until_written(progress, proc, 10)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    saved = json.loads(progress.read_text())["written"]
    assert proc.returncode == 130
    assert f"interrupted; {saved} records are saved in {incomplete_path(tmp_path / 'db')}" in err
    assert "--resume" in err and "Traceback" not in err
    convert(tmp_path / "img", lst, tmp_path / "db", _opts(workers=1, resume=True))
    assert len(_items(tmp_path / "db")) == 400
