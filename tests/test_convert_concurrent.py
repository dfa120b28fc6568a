"""`datakit convert` into an output another run is writing, and --resume over a database changed since.

A tester ran two conversions into one LMDB: the first died of `Bus error`, and a later --resume
reported success over missing records, as it did after the unfinished data file was deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datakit.convert import ConvertInterrupted, convert
from datakit.outputlock import OutputLock
from datakit.db import PROGRESS_NAME, incomplete_path, open_reader
from datakit.errors import DatabaseError
from tests.ctrl_c import ctrl_c_when
from tests.test_convert import make_images, opts, write_list

ROOT = Path(__file__).resolve().parents[1]
SIZE = {"resize_height": 24, "resize_width": 32}  # one size for every record (HDF5 needs it)
N = 400  # images in the interrupted conversions: enough that Ctrl-C lands before the end


def test_a_second_conversion_into_the_same_output_is_refused_and_the_first_finishes(tmp_path):
    lst = write_list(tmp_path / "list.txt", make_images(tmp_path, 40))
    db = tmp_path / "db"
    refusals: list[str] = []

    def second_run(state: dict) -> None:  # called inside the first run, after each progress save
        if not refusals:
            with pytest.raises(DatabaseError) as err:
                convert(tmp_path / "img", lst, db, opts(resume=True))
            refusals.append(str(err.value))

    summary = convert(tmp_path / "img", lst, db, opts(commit_every=8), on_progress_saved=second_run)
    assert len(refusals) == 1
    assert f"another datakit convert (process {os.getpid()}) is writing this database" in refusals[0]
    assert summary.written == 40
    with open_reader(db) as reader:
        assert len(reader) == 40
    assert not (tmp_path / ".db.lock").exists()  # released and removed once the conversion ended
    convert(tmp_path / "img", lst, db, opts(overwrite=True))  # and the output is free again


def test_the_command_line_says_so_in_one_line(tmp_path):
    lst = write_list(tmp_path / "list.txt", make_images(tmp_path, 3))
    lock = OutputLock(tmp_path / "db")
    lock.acquire()
    try:
        r = subprocess.run([sys.executable, "-m", "cli.datakit_main", "convert", str(tmp_path / "img"), str(lst),
                            str(tmp_path / "db"), "--no-progress"], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
    finally:
        lock.release()
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert errors == [f"datakit: error: {tmp_path / 'db'}: another datakit convert (process {os.getpid()}) "
                      "is writing this database; wait for it to finish, or name another output"]
    assert not (tmp_path / "db").exists() and not incomplete_path(tmp_path / "db").exists()


def test_a_lock_left_by_a_killed_run_blocks_nothing(tmp_path):
    """A stale lock file (its holder was killed) holds no flock: the next run takes it."""
    lst = write_list(tmp_path / "list.txt", make_images(tmp_path, 3))
    (tmp_path / ".db.lock").write_text("999999\n")
    assert convert(tmp_path / "img", lst, tmp_path / "db", opts()).written == 3


def _interrupted(tmp_path: Path, backend: str) -> tuple[Path, Path, int]:
    """A conversion stopped by Ctrl-C after its second checkpoint; (list, db, records its progress file claims)."""
    lst = write_list(tmp_path / "list.txt", make_images(tmp_path, N))
    db = tmp_path / "db"
    saves: list[int] = []
    with pytest.raises(ConvertInterrupted), ctrl_c_when(lambda: len(saves) >= 3):
        convert(tmp_path / "img", lst, db, opts(backend=backend, commit_every=5, hdf5_chunk=5, **SIZE),
                on_progress_saved=lambda state: saves.append(int(state["written"])))
    claimed = int(json.loads((incomplete_path(db) / PROGRESS_NAME).read_text())["written"])
    assert 0 < claimed < N
    return lst, db, claimed


@pytest.mark.parametrize("backend", ["lmdb", "leveldb", "hdf5"])
def test_resume_refuses_an_unfinished_database_that_lost_its_records(tmp_path, backend):
    lst, db, claimed = _interrupted(tmp_path, backend)
    work = incomplete_path(db)
    for path in work.iterdir():  # the data files go; the progress file stays
        if path.name != PROGRESS_NAME:
            path.unlink() if path.is_file() else shutil.rmtree(path)
    with pytest.raises(DatabaseError, match=rf"holds 0 records where its progress file says {claimed}: .*"
                                            r"start over with --overwrite"):
        convert(tmp_path / "img", lst, db, opts(backend=backend, resume=True, hdf5_chunk=5, **SIZE))
    assert not db.exists()
    summary = convert(tmp_path / "img", lst, db, opts(backend=backend, overwrite=True, hdf5_chunk=5, **SIZE))
    assert summary.written == N


@pytest.mark.parametrize("backend", ["lmdb", "leveldb", "hdf5"])
def test_resume_of_an_untouched_unfinished_database_still_finishes(tmp_path, backend):
    lst, db, _ = _interrupted(tmp_path, backend)
    summary = convert(tmp_path / "img", lst, db, opts(backend=backend, resume=True, hdf5_chunk=5, **SIZE))
    assert summary.written == N and summary.resumed_at
    with open_reader(db) as reader:
        assert len(reader) == N


@pytest.mark.parametrize("backend", ["lmdb", "hdf5"])
def test_a_failed_write_saves_no_progress_past_it(tmp_path, backend, monkeypatch):
    """A write that fails in the writer thread (a disk error) stops the conversion; the batches queued
    behind it must not be written, nor the progress file claim them (a hole the resume would keep)."""
    from datakit.db.hdf5_backend import HDF5Writer
    from datakit.db.lmdb_backend import LmdbWriter
    lst = write_list(tmp_path / "list.txt", make_images(tmp_path, 120))
    writer_class = {"lmdb": LmdbWriter, "hdf5": HDF5Writer}[backend]
    real_write = writer_class.write
    calls = []

    def failing_write(self, items):
        calls.append(len(items))
        if len(calls) == 4:
            raise OSError(28, "No space left on device (simulated)")
        return real_write(self, items)
    monkeypatch.setattr(writer_class, "write", failing_write)
    with pytest.raises(OSError, match="simulated"):
        convert(tmp_path / "img", lst, tmp_path / "db", opts(backend=backend, commit_every=5, hdf5_chunk=5, **SIZE))
    monkeypatch.setattr(writer_class, "write", real_write)
    summary = convert(tmp_path / "img", lst, tmp_path / "db", opts(backend=backend, resume=True, hdf5_chunk=5, **SIZE))
    ref = convert(tmp_path / "img", lst, tmp_path / "ref", opts(backend=backend, hdf5_chunk=5, **SIZE))
    assert summary.written == ref.written == 120
    with open_reader(tmp_path / "db") as a, open_reader(tmp_path / "ref") as b:
        if backend == "hdf5":
            assert [r.label for r in a] == [r.label for r in b]
        else:
            assert list(a.raw_items()) == list(b.raw_items())


def test_resume_on_a_complete_database_refuses_other_inputs_or_options(tmp_path, cli):
    """--resume on a finished database is a no-op only for the list and options it was made with."""
    root = tmp_path / "img"
    lst = write_list(tmp_path / "list.txt", make_images(tmp_path, 6))
    base = ["datakit", "convert", str(root), str(lst), str(tmp_path / "db"), "--resize-height", "16",
            "--resize-width", "16", "--no-progress"]
    assert cli(*base).returncode == 0
    before = (tmp_path / "db" / "data.mdb").read_bytes()
    same = cli(*base, "--resume")
    assert same.returncode == 0 and "already complete (6 records)" in same.stdout, same.stderr
    other = cli(*base[:-5], "--resize-height", "20", "--resize-width", "16", "--no-progress", "--resume")
    assert other.returncode != 0
    [line] = other.stderr.strip().splitlines()
    assert "it is complete, made with other options: resize_height=16 (now 20)" in line
    assert "--overwrite to convert again" in line
    write_list(lst, make_images(tmp_path, 5))
    changed = cli(*base, "--resume")
    assert changed.returncode != 0
    assert "the list file changed since the database was made" in changed.stderr
    assert (tmp_path / "db" / "data.mdb").read_bytes() == before
