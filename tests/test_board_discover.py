"""What the board finds under DIR, and what it leaves alone."""

from __future__ import annotations

import json

from trainer.board.discover import is_run_log, scan


def test_run_log_names():
    for name in ("train.log", "lenet.log.gz", "caffe.INFO", "140403_063910_half0A.o227963.gz", "x.o12", "a.log.txt"):
        assert is_run_log(name), name
    for name in ("train.txt", "model.caffemodel", "log", "notes.logbook", "solver.prototxt", "a.o"):
        assert not is_run_log(name), name


def test_scan_finds_each_kind_and_skips_hidden_venvs_and_database_insides(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "train.log").write_text("")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "h.log").write_text("")
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / "pyvenv.cfg").write_text("")
    (tmp_path / "venv" / "pip.log").write_text("")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "c.log").write_text("")
    db = tmp_path / "d" / "train_lmdb"
    db.mkdir(parents=True)
    (db / "data.mdb").write_bytes(b"x")
    (db / "inside.log").write_text("")                 # not searched: a database's own files
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "grid.json").write_text(json.dumps({}))
    m = tmp_path / "m"
    m.mkdir()
    (m / "deploy.prototxt").write_text("")
    (m / "w.caffemodel").write_bytes(b"")
    (tmp_path / "only_deploy").mkdir()
    (tmp_path / "only_deploy" / "deploy.prototxt").write_text("")
    found = scan(tmp_path)
    assert list(found.runs) == ["r/train.log"]
    assert list(found.databases) == ["d/train_lmdb"] and list(found.grids) == ["g"] and list(found.models) == ["m"]
    before = found.fingerprint()
    (tmp_path / "r" / "train.log").write_text("I0101 more\n")
    assert scan(tmp_path).fingerprint() != before


def test_scan_stops_after_max_entries(tmp_path):
    for i in range(30):
        (tmp_path / f"{i:02d}.log").write_text("")
    found = scan(tmp_path, max_entries=10)
    assert found.truncated and not found.runs
    assert not scan(tmp_path).truncated and len(scan(tmp_path).runs) == 30
