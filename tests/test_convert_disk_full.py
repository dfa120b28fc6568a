"""`datakit convert` on a file system that fills up: one line naming the path and the space needed,
never a crash (an LMDB's write map would die of SIGBUS), and `--resume` after freeing space gives
the database an uninterrupted run writes.

The file system is a small tmpfs the test mounts (needs root and a kernel that lets it mount;
skipped with the reason otherwise), as in tests/test_snapshot_disk_full.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datakit.db import incomplete_path, open_reader
from tests.conftest import ROOT
from tests.test_convert import make_images, write_list


@pytest.fixture
def small_fs(tmpfs):
    """An 8 MiB tmpfs, unmounted afterwards."""
    return tmpfs("8m")


def _fill(folder: Path, leave: int) -> Path:
    """Fill `folder`'s file system up to `leave` free bytes; returns the filler file."""
    st = os.statvfs(folder)
    filler = folder / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def _convert(cli, tmp_path: Path, lst: Path, db: Path, *extra: str):
    return cli("datakit", "convert", str(tmp_path / "img"), str(lst), str(db), "--workers", "1",
               "--commit-every", "5", "--checkpoint-every", "1", "--no-progress", *extra)


def _one_line_naming(res, path: Path) -> str:
    assert res.returncode == 1, (res.returncode, res.stderr)  # not 135 (SIGBUS) nor a traceback
    [line] = res.stderr.strip().splitlines()
    assert str(path) in line and "no space left on device" in line, line
    return line


def test_lmdb_on_a_full_disk_is_one_line_then_resume_gives_the_same_database(small_fs, tmp_path, cli):
    entries = make_images(tmp_path, 80, size=(120, 160))  # about 58 KB per raw record, 4.6 MB in all
    lst = write_list(tmp_path / "list.txt", entries)
    ref = tmp_path / "ref"
    assert _convert(cli, tmp_path, lst, ref).returncode == 0
    filler = _fill(small_fs, 5 << 19)  # room for about a third of the records
    db = small_fs / "db"
    line = _one_line_naming(_convert(cli, tmp_path, lst, db), incomplete_path(db) / "data.mdb")
    assert " needs " in line and " free" in line and "--resume" in line, line
    kept = int(line.split("; the ", 1)[1].split(" records saved")[0])
    assert 0 < kept < 80, line  # some work finished before the disk filled: --resume keeps it
    assert not db.exists() and incomplete_path(db).is_dir()
    filler.unlink()
    res = _convert(cli, tmp_path, lst, db, "--resume")
    assert res.returncode == 0, res.stderr
    assert "resumed at record" in res.stdout
    with open_reader(db) as a, open_reader(ref) as b:
        assert list(a.raw_items()) == list(b.raw_items())
        assert len(a) == 80


def test_lmdb_reservation_failing_at_the_first_transaction_is_one_line(small_fs, tmp_path, cli):
    entries = make_images(tmp_path, 20, size=(120, 160))
    lst = write_list(tmp_path / "list.txt", entries)
    _fill(small_fs, 1200 << 10)  # room to open the LMDB, not for the first transaction's reservation
    db = small_fs / "db"
    line = _one_line_naming(_convert(cli, tmp_path, lst, db), incomplete_path(db) / "data.mdb")
    assert " needs " in line and " free" in line and "the 0 records saved so far" in line, line


def test_lmdb_writer_opened_on_a_full_disk_raises_instead_of_dying(small_fs):
    """LMDB writes its lock file through a memory map too: on a full disk that was SIGBUS at open."""
    _fill(small_fs, 0)
    code = ("from datakit.db.lmdb_backend import LmdbWriter\n"
            f"LmdbWriter({str(small_fs / 'db')!r}).write([(b'k', b'v' * 100)])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"datakit.errors.DiskFull: {small_fs / 'db'}: no space left on device: opening the LMDB writer needs")


def test_hdf5_on_a_full_disk_names_the_shard_then_resume_gives_the_same_data(small_fs, tmp_path, cli):
    entries = make_images(tmp_path, 30, size=(60, 80))  # 58 KB of float32 per record, 1.7 MB in all
    lst = write_list(tmp_path / "list.txt", entries)
    hdf5 = ("--backend", "hdf5", "--hdf5-chunk", "5", "--resize-height", "60", "--resize-width", "80")
    ref = tmp_path / "ref"
    assert _convert(cli, tmp_path, lst, ref, *hdf5).returncode == 0
    filler = _fill(small_fs, 700 << 10)
    db = small_fs / "db"
    line = _one_line_naming(_convert(cli, tmp_path, lst, db, *hdf5), incomplete_path(db))
    assert ".h5" in line and "--resume" in line, line
    kept = int(line.split("; the ", 1)[1].split(" records saved")[0])
    assert 0 < kept < 30 and kept % 5 == 0, line  # the shards completed before the disk filled are kept
    filler.unlink()
    res = _convert(cli, tmp_path, lst, db, "--resume", *hdf5)
    assert res.returncode == 0, res.stderr
    with open_reader(db) as a, open_reader(ref) as b:
        ra, rb = list(a), list(b)
    assert len(ra) == len(rb) == 30
    assert all(x.label == y.label and np.array_equal(x.image, y.image) for x, y in zip(ra, rb))


def test_a_disk_with_no_room_at_all_is_one_line_and_leaves_nothing(small_fs, tmp_path, cli):
    """0 bytes free: `convert`, `mean` and `check-list --report` said only 'No space left on device', and
    convert left an empty DB.incomplete that every later run refused (no progress file)."""
    entries = make_images(tmp_path, 3)
    lst = write_list(tmp_path / "list.txt", entries)
    good = tmp_path / "db"
    assert _convert(cli, tmp_path, lst, good, "--resize-height", "24", "--resize-width", "32").returncode == 0
    filler = _fill(small_fs, 0)
    try:
        for args, target in ((("convert", str(tmp_path / "img"), str(lst), str(small_fs / "db"), "--no-progress"),
                              small_fs / "db.incomplete"),
                             (("mean", str(good), str(small_fs / "m.binaryproto")), small_fs / "m.binaryproto"),
                             (("check-list", str(lst), "--root", str(tmp_path / "img"), "--report",
                               str(small_fs / "r.json")), small_fs / "r.json")):
            res = cli("datakit", *args)
            assert res.returncode == 1, res.stderr
            [line] = res.stderr.strip().splitlines()
            assert "no space left on device" in line and "free" in line and str(small_fs) in line, line
            assert not target.exists()
    finally:
        filler.unlink()
    assert _convert(cli, tmp_path, lst, small_fs / "db").returncode == 0  # room again: a plain rerun works


def test_a_small_hdf5_job_fits_where_its_records_fit(small_fs, tmp_path, cli):
    """10 images at 100x100 (1.2 MB of float32) were refused on 3 MB free: the shard reserved a whole
    --hdf5-chunk of 1000 records (120 MB)."""
    lst = write_list(tmp_path / "list.txt", make_images(tmp_path, 10))
    filler = _fill(small_fs, 3 << 20)
    try:
        res = _convert(cli, tmp_path, lst, small_fs / "db", "--backend", "hdf5", "--resize-height", "100",
                       "--resize-width", "100")
        assert res.returncode == 0, res.stderr
    finally:
        filler.unlink()
    with open_reader(small_fs / "db") as reader:
        assert len(reader) == 10
