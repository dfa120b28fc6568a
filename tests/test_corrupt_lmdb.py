"""A damaged LMDB is one line naming the database, from every command that reads or resumes one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from datakit.db.lmdb_backend import LmdbReader
from datakit.errors import DatabaseError

NET = '''
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label"
  data_param { source: "%s" batch_size: 10 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


def random_images(root: Path, list_name: str, seed: int, count: int = 300) -> Path:
    """`count` random 32x32 PNGs under root/img and their list root/list_name (labels 0..2): enough records
    that a database spans many pages."""
    (root / "img").mkdir()
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        cv2.imwrite(str(root / "img" / f"c{i}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        lines.append(f"c{i}.png {i % 3}\n")
    (root / list_name).write_text("".join(lines))
    return root / list_name


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """300 random 32x32 images converted to LMDB: data.mdb spans many pages."""
    from tests.conftest import run_cli
    root = tmp_path_factory.mktemp("corrupt")
    random_images(root, "l_ok.txt", seed=1)
    res = run_cli("datakit", "convert", str(root / "img"), str(root / "l_ok.txt"), str(root / "good"),
                  "--no-progress")
    assert res.returncode == 0, res.stderr
    return root


def damaged_copy(converted: Path, tmp_path: Path, fill: bytes) -> Path:
    """A copy of the database with 2000 bytes of page 2 overwritten, as the bug report did."""
    db = tmp_path / "lsm"
    db.mkdir()
    data = (converted / "good" / "data.mdb").read_bytes()
    (db / "data.mdb").write_bytes(data[:8192 + 16] + fill * 2000 + data[8192 + 16 + 2000:])
    return db


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    return lines[-1]


@pytest.mark.parametrize("fill, lmdb_says", [(b"\xab", "MDB_CORRUPTED"), (b"\x01", "MDB_PAGE_NOTFOUND")])
def test_mean_and_inspect_say_the_database_is_corrupt(converted, tmp_path, cli, fill, lmdb_says):
    db = damaged_copy(converted, tmp_path, fill)
    for args in (["mean", str(db), str(tmp_path / "m.binaryproto")], ["inspect", str(db)]):
        res = cli("datakit", *args)
        assert res.returncode == 1
        line = one_line(res.stderr)
        assert line.startswith(f"datakit: error: {db}: the LMDB database is corrupt (") and lmdb_says in line
    assert not (tmp_path / "m.binaryproto").exists()


def test_the_reader_raises_a_database_error(converted, tmp_path):
    db = damaged_copy(converted, tmp_path, b"\xab")
    with LmdbReader(db) as reader, pytest.raises(DatabaseError, match="the LMDB database is corrupt"):
        for _ in reader.raw_items():
            pass


def test_trainer_data_layer_says_the_database_is_corrupt(converted, tmp_path, cli):
    db = damaged_copy(converted, tmp_path, b"\xab")
    (tmp_path / "net.prototxt").write_text(NET % db)
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.01\n'
                                              'lr_policy: "fixed"\nmax_iter: 40\ndisplay: 0\n'
                                              f'snapshot_prefix: "{tmp_path / "snap"}"\n')
    res = cli("trainer", "fit", "--solver", str(tmp_path / "solver.prototxt"), "--device", "cpu", "--quiet",
              cwd=tmp_path)
    assert res.returncode != 0
    assert f"{db}: the LMDB database is corrupt (" in one_line(res.stderr)


def test_resume_of_a_truncated_unfinished_database_says_start_over(converted, tmp_path, cli):
    work = tmp_path / "t.incomplete"
    work.mkdir()
    data = (converted / "good" / "data.mdb").read_bytes()
    (work / "data.mdb").write_bytes(data[:20000])  # cut short, as a crash of the disk would leave it
    progress = json.loads((converted / "good" / "datakit-convert.json").read_text())
    progress.update(status="incomplete", next_index=150, written=150)
    progress.pop("summary", None)
    (work / "datakit-convert.json").write_text(json.dumps(progress))
    res = cli("datakit", "convert", "--resume", str(converted / "img"), str(converted / "l_ok.txt"),
              str(tmp_path / "t"), "--no-progress")
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert line.startswith(f"datakit: error: {work}: the unfinished database is damaged; "
                           "start over with --overwrite (")
    assert not (tmp_path / "t").exists() and os.path.getsize(work / "datakit-convert.json") > 0


@pytest.mark.parametrize("cut", [5000, 20000, 600000])
def test_a_data_mdb_cut_short_is_refused_not_a_bus_error(converted, tmp_path, cli, cut):
    db = tmp_path / "cut"
    db.mkdir()
    (db / "data.mdb").write_bytes((converted / "good" / "data.mdb").read_bytes()[:cut])
    for args in (["mean", str(db), str(tmp_path / "m.binaryproto")], ["inspect", str(db)]):
        res = cli("datakit", *args)
        assert res.returncode == 1, res.returncode  # was -7 (SIGBUS) reading the pages past the end
        assert one_line(res.stderr) == (f"datakit: error: {db}: the LMDB database is corrupt (data.mdb is cut "
                                        f"short: {cut} bytes of the "
                                        f"{(converted / 'good' / 'data.mdb').stat().st_size} its last "
                                        "transaction wrote)")
