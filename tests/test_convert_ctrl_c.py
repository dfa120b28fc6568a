"""Ctrl-C / SIGTERM during `datakit convert` keep every record the run had finished, not just the last checkpoint.

A tester saw the bar at 2631/3000 and then "1368 records are saved": the interrupt was raised wherever
the main thread was, and only the last checkpoint (every --checkpoint-every transactions, or 64 MB)
was kept. Now the first signal is held back to the end of a record, the records so far are committed
and flushed as a last checkpoint, and the count reported is what the progress file claims and what
--resume starts from. The runs here checkpoint only at the end (--checkpoint-every 1000 x 5 records
is more than the list), so keeping more than 0 records proves the stop saved its own checkpoint.

An image missing at list position MISSING makes a warning when the run has handled that many records:
the Ctrl-C is pressed then (deterministic), and the workers are slowed so the run cannot end first.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import pytest

import datakit.convert.pipeline as pipeline
from datakit.convert import ConvertInterrupted, convert
from datakit.convert.encode import encode_batch
from datakit.db import PROGRESS_NAME, incomplete_path, open_reader
from datakit.db.lmdb_backend import LmdbWriter
from tests.conftest import ROOT
from tests.ctrl_c import ctrl_c_when
from tests.test_convert import make_images, opts, write_list

N = 240
MISSING = 60  # list position of an image that is not on disk
CHUNK = 20    # HDF5 records per shard
OPTIONS = {"commit_every": 5, "checkpoint_every": 1000, "hdf5_chunk": CHUNK, "resize_height": 24, "resize_width": 32}


def _slow_encode_batch(spec, items, slot=None):
    """encode_batch, slowed down (in the workers) so that the conversion is still running when Ctrl-C lands."""
    time.sleep(0.004 * len(items))
    return encode_batch(spec, items, slot)


def _inputs(tmp_path: Path, missing: tuple[int, ...] = (MISSING,)) -> Path:
    entries = make_images(tmp_path, N, size=(24, 32))
    for i in missing:
        entries[i] = (f"sub/not there {i}.png", 0)
    return write_list(tmp_path / "list.txt", entries)


def _progress(db: Path) -> dict:
    return json.loads((incomplete_path(db) / PROGRESS_NAME).read_text())


def _content(db: Path, backend: str) -> list:
    """Everything a reader sees, and for HDF5 how the records are cut into shards too."""
    if backend != "hdf5":
        with open_reader(db) as reader:
            return list(reader.raw_items())
    shards = []
    for path in sorted(db.glob("*.h5")):
        with h5py.File(path, "r") as h5:
            shards.append((path.name, h5["data"][()].tobytes(), h5["label"][()].tobytes()))
    return shards


def _reference(tmp_path: Path, lst: Path, backend: str) -> list:
    ref = tmp_path / "reference"
    convert(tmp_path / "img", lst, ref, opts(backend=backend, **OPTIONS))
    return _content(ref, backend)


@pytest.mark.parametrize("backend", ["lmdb", "leveldb", "hdf5"])
def test_ctrl_c_keeps_every_record_handled_and_resume_is_identical(tmp_path, backend, monkeypatch):
    lst = _inputs(tmp_path)
    want = _reference(tmp_path, lst, backend)
    monkeypatch.setattr(pipeline, "encode_batch", _slow_encode_batch)
    db = tmp_path / "db"
    warned = threading.Event()
    with pytest.raises(ConvertInterrupted) as stop, ctrl_c_when(warned.is_set):
        convert(tmp_path / "img", lst, db, opts(backend=backend, workers=2, **OPTIONS),
                warn=lambda message: warned.set())
    saved = _progress(db)
    assert stop.value.written == saved["written"]
    assert f"interrupted; {saved['written']} records are saved in " in str(stop.value)
    if backend == "hdf5":  # durable only as whole shards: the records of the partial shard are redone
        assert saved["written"] % CHUNK == 0 and saved["written"] >= MISSING
        note = re.search(r" \(HDF5 keeps whole --hdf5-chunk files: the (\d+) records of the unfinished one are "
                         r"redone\): ", str(stop.value))  # ... as the message says, with how many
        handled = saved["written"] + (int(note.group(1)) if note else 0)
        assert MISSING <= handled < saved["written"] + CHUNK
    else:  # the record that warned, and every one before it, are saved (the last checkpoint held none)
        assert saved["next_index"] > MISSING and saved["written"] == saved["next_index"] - 1
        assert [s["index"] for s in saved["skipped"]] == [MISSING]
    assert saved["next_index"] < N and not stop.value.at_once
    monkeypatch.undo()
    summary = convert(tmp_path / "img", lst, db, opts(backend=backend, resume=True, **OPTIONS))
    assert summary.resumed_at == saved["next_index"]  # resume checked that the database holds `written` records
    assert summary.written == N - 1 and _content(db, backend) == want


def test_a_second_ctrl_c_stops_at_once_and_says_only_the_last_checkpoint_is_kept(tmp_path, monkeypatch):
    """The second Ctrl-C lands while the stop's own checkpoint is being flushed: it stops at once, the message
    says so, the checkpoint under way still completes whole (never half), and --resume finishes the job."""
    lst = _inputs(tmp_path)
    want = _reference(tmp_path, lst, "lmdb")
    monkeypatch.setattr(pipeline, "encode_batch", _slow_encode_batch)
    main = threading.main_thread().ident
    assert main is not None
    real_sync = LmdbWriter.sync

    def sync_pressed_again(self) -> None:  # in the checkpoint thread: the stop's own checkpoint
        if warned.is_set() and not pressed:
            pressed.append(True)
            signal.pthread_kill(main, signal.SIGINT)
            time.sleep(0.3)  # the main thread is waiting for this checkpoint when the second Ctrl-C reaches it
        real_sync(self)

    monkeypatch.setattr(LmdbWriter, "sync", sync_pressed_again)
    db = tmp_path / "db"
    warned = threading.Event()
    pressed: list[bool] = []
    with pytest.raises(ConvertInterrupted) as stop, ctrl_c_when(warned.is_set):
        convert(tmp_path / "img", lst, db, opts(workers=2, **OPTIONS), warn=lambda message: warned.set())
    saved = _progress(db)
    assert stop.value.at_once and stop.value.written == saved["written"]
    assert str(stop.value).startswith("interrupted at once by a second signal (the last checkpoint is kept); "
                                      f"{saved['written']} records are saved in ")
    monkeypatch.undo()
    summary = convert(tmp_path / "img", lst, db, opts(resume=True, **OPTIONS))
    assert summary.resumed_at == saved["next_index"] and _content(db, "lmdb") == want


def test_a_resumed_conversion_interrupted_again_keeps_its_records_too(tmp_path, monkeypatch):
    """Ctrl-C, --resume, Ctrl-C again in the resumed run, --resume: each stop keeps what its run finished,
    counted from the start of the list, and the database is still the uninterrupted run's."""
    lst = _inputs(tmp_path, missing=(MISSING, 150))
    want = _reference(tmp_path, lst, "lmdb")
    monkeypatch.setattr(pipeline, "encode_batch", _slow_encode_batch)
    db = tmp_path / "db"
    for resume, at in ((False, MISSING), (True, 150)):
        warned = threading.Event()
        with pytest.raises(ConvertInterrupted) as stop, ctrl_c_when(warned.is_set):
            convert(tmp_path / "img", lst, db, opts(workers=2, resume=resume, **OPTIONS),
                    warn=lambda message, warned=warned: warned.set())
        saved = _progress(db)
        assert stop.value.written == saved["written"] == saved["next_index"] - len(saved["skipped"])
        assert at < saved["next_index"] < N
    monkeypatch.undo()
    summary = convert(tmp_path / "img", lst, db, opts(resume=True, **OPTIONS))
    assert summary.resumed_at == saved["next_index"] and summary.written == N - 2 and _content(db, "lmdb") == want


def test_a_decoding_worker_killed_mid_run_keeps_the_finished_records_in_one_line(tmp_path, monkeypatch):
    """A worker killed (the out-of-memory killer's choice, a `kill -9` of the wrong pid) ended the conversion
    with BrokenProcessPool's traceback, keeping the last checkpoint only. Now: one line naming the records
    saved, the records finished before it kept, and --resume finishes the database of an uninterrupted run."""
    import multiprocessing

    from datakit.convert import WorkerDied

    lst = _inputs(tmp_path)
    want = _reference(tmp_path, lst, "lmdb")
    monkeypatch.setattr(pipeline, "encode_batch", _slow_encode_batch)
    db = tmp_path / "db"
    warned = threading.Event()

    def kill_a_worker() -> None:
        warned.wait(60)
        workers = multiprocessing.active_children()
        assert workers
        os.kill(workers[0].pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    with pytest.raises(WorkerDied) as died:
        convert(tmp_path / "img", lst, db, opts(workers=2, **OPTIONS), warn=lambda message: warned.set())
    killer.join()
    saved = _progress(db)
    assert str(died.value).startswith(f"{lst}: a decoding worker process died ")
    assert f"; the {saved['written']} records saved so far are kept in {incomplete_path(db)}: rerun " in str(died.value)
    assert saved["next_index"] > MISSING and saved["written"] == saved["next_index"] - 1
    monkeypatch.undo()
    summary = convert(tmp_path / "img", lst, db, opts(resume=True, **OPTIONS))
    assert summary.resumed_at == saved["next_index"] and _content(db, "lmdb") == want


def test_ctrl_c_in_a_sharded_conversion_counts_every_shard_in_place(tmp_path, monkeypatch):
    """The sharded path's durable unit is a whole shard. Its count was of the results read so far: with
    partitions run in this process the shards after the interrupted one were written but not counted. The
    count is now what is on disk, what --resume keeps; the resumed database equals the local one."""
    import datakit.convert.partition as partition
    from datakit.convert.sharded import SHARD_RESULT, convert_sharded
    from datakit.parallel import InlineExecutor

    lst = _inputs(tmp_path)
    monkeypatch.setattr(partition, "encode_batch", _slow_encode_batch)
    db, work = tmp_path / "db", incomplete_path(tmp_path / "db")

    def shards() -> list[Path]:
        return sorted(work.glob("shard-*")) if work.is_dir() else []

    with pytest.raises(ConvertInterrupted) as stop, ctrl_c_when(lambda: len(shards()) >= 2):
        convert_sharded(tmp_path / "img", lst, db, opts(commit_every=5), InlineExecutor(), partition_size=8,
                        warn=lambda message: None)
    in_place = [json.loads((s / SHARD_RESULT).read_text()) for s in shards()]
    assert 2 <= len(in_place) < N // 8
    assert stop.value.written == sum(int(d["count"]) for d in in_place)
    monkeypatch.undo()
    summary = convert_sharded(tmp_path / "img", lst, db, opts(commit_every=5, resume=True), InlineExecutor(),
                              partition_size=8, warn=lambda message: None)
    assert summary.written == N - 1 and summary.resumed_at == stop.value.written
    convert(tmp_path / "img", lst, tmp_path / "local", opts(commit_every=5), warn=lambda message: None)
    assert _content(db, "lmdb") == _content(tmp_path / "local", "lmdb")


_DRIVER = ("import sys, datakit.convert.pipeline as p, tests.test_convert_ctrl_c as t; "
           "p.encode_batch = t._slow_encode_batch; from cli.datakit_main import main; "
           "sys.argv = ['datakit', *sys.argv[1:]]; sys.exit(main())")


@pytest.mark.parametrize("backend,sig", [("lmdb", "SIGINT"), ("lmdb", "SIGTERM"), ("hdf5", "SIGTERM")])
def test_the_whole_process_group_signalled_stops_cleanly_with_the_count_saved(tmp_path, backend, sig):
    """As a terminal's Ctrl-C (or `kill -TERM -PGID`) does: every process of the group gets the signal,
    the decoding workers too. One line names the records saved (the progress file's), no worker prints a
    traceback, and the suggested --resume finishes a database identical to an uninterrupted run."""
    lst = _inputs(tmp_path)
    want = _reference(tmp_path, lst, backend)
    db = tmp_path / "db"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items()]
    cmd = [sys.executable, "-c", _DRIVER, "convert", str(tmp_path / "img"), str(lst), str(db), "--workers", "2",
           "--backend", backend, "--no-progress", *flags]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the missing image's warning: MISSING + 1 records handled
    assert f"not there {MISSING}.png" in first and "skipped" in first, first
    os.killpg(proc.pid, getattr(signal, sig))
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == {"SIGINT": 130, "SIGTERM": 143}[sig], rest
    saved = _progress(db)
    [line] = rest.strip().splitlines()
    what = "interrupted" if sig == "SIGINT" else "stopped by SIGTERM"
    assert line.startswith(f"datakit: {what}; {saved['written']} records are saved in {incomplete_path(db)}")
    assert saved["written"] >= (MISSING // CHUNK * CHUNK if backend == "hdf5" else MISSING)
    assert saved["next_index"] < N
    suggested = line.split("to finish, run: datakit ", 1)[1]
    res = subprocess.run([sys.executable, "-m", "cli.datakit_main", *shlex.split(suggested)], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and f"resumed at record {saved['next_index']}" in res.stdout, res.stderr
    assert _content(db, backend) == want
