"""What the board finds under DIR, and what it leaves alone."""

from __future__ import annotations

import gzip
import json

from trainer.board.discover import LogSniffer, is_run_log, scan


def test_run_log_names():
    for name in ("train.log", "lenet.log.gz", "caffe.INFO", "140403_063910_half0A.o227963.gz", "x.o12", "a.log.txt"):
        assert is_run_log(name), name
    for name in ("train.txt", "model.caffemodel", "log", "notes.logbook", "solver.prototxt", "a.o"):
        assert not is_run_log(name), name


HEADER = "I1202 10:00:00.000000 1 fit.py:1] trainer fit run 1: fresh start\n"


def test_scan_finds_each_kind_and_skips_hidden_venvs_and_database_insides(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "train.log").write_text(HEADER)
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
    (tmp_path / "r" / "train.log").write_text(HEADER + "I0101 more\n")
    assert scan(tmp_path).fingerprint() != before


def test_scan_stops_after_max_entries(tmp_path):
    for i in range(30):
        (tmp_path / f"{i:02d}.log").write_text(HEADER)
    found = scan(tmp_path, max_entries=10)
    assert found.truncated and not found.runs
    assert not scan(tmp_path).truncated and len(scan(tmp_path).runs) == 30


def test_only_training_logs_are_runs(tmp_path):
    """A `.log` is a run when it holds a line of training (ours or Caffe's, failed ones too); the
    board's own redirected output, pip's log or a glog log of another tool is not."""
    from tests.board_fixtures import start_run

    from trainer.caffelog import CaffeLog
    (tmp_path / "board.log").write_text("board: serving runs at http://127.0.0.1:8470/\nboard: stopped\n")
    (tmp_path / "pip.log").write_text("Collecting numpy\n  Downloading numpy-2.0.whl\nSuccessfully installed numpy\n")
    (tmp_path / "convert_imageset.INFO").write_text(
        "Log file created at: 2015/01/01 10:00:00\n"
        "I0101 10:00:00.000000  1 convert_imageset.cpp:86] A total of 5000 images.\n"
        "I0101 10:00:01.000000  1 convert_imageset.cpp:144] Processed 1000 files.\n")
    (tmp_path / "notes.log.gz").write_bytes(gzip.compress(b"just notes\n"))
    (tmp_path / "empty.log").write_text("")
    start_run(tmp_path, "ours.log").close()
    failed = CaffeLog(tmp_path / "failed.log", stream=None)   # trainer fit that stopped on an error
    failed.run_header("fresh start")
    failed.line("train_lmdb: not a database", severity="E")
    failed.close()
    (tmp_path / "caffe.INFO").write_text(                      # Caffe that died before iteration 0
        "Log file created at: 2015/01/01 10:00:00\n"
        "I0101 10:00:00.000000  1 caffe.cpp:113] Use GPU with device ID 0\n"
        "I0101 10:00:00.100000  1 caffe.cpp:121] Starting Optimization\n"
        "I0101 10:00:00.200000  1 solver.cpp:32] Initializing solver from parameters:\n"
        "F0101 10:00:01.000000  1 db_lmdb.cpp:13] Check failed: mdb_status == 0 (2 vs. 0) No such file\n")
    (tmp_path / "2014.o12.gz").write_bytes(gzip.compress(b"I0403 06:46:22.569109 23304 solver.cpp:217] Iteration 20, lr = 0.01\n"))
    (tmp_path / "cut.log.gz").write_bytes(gzip.compress(b"x" * 5000)[:30])   # unreadable: listed, with its error
    (tmp_path / "junk.log").write_bytes(bytes(range(128, 256)) * 10)      # binary: a damaged log, listed
    # an SGE job's preamble (the 2014 netbase log has 107 lines of it) before Caffe's first line, one
    # crossing the 16 KiB pieces the head is read in; past TRAINING_HEAD, a line no longer counts
    preamble = "".join(f"  Script line {i}: setting up the job environment\n" for i in range(300))
    preamble += "#" * (2 * 16384 - 50 - len(preamble) - 1) + "\n"   # "Starting" crosses the second piece's end
    (tmp_path / "sge.log").write_text(preamble + "I0311 23:50:56.204687 24248 train_net.cpp:26] Starting Optimization\n")
    (tmp_path / "late.log").write_text("x" * (300 * 1024) + "\nI0101 00:00:00.0 1 solver.cpp:1] Iteration 0, loss = 1\n")
    sniffer = LogSniffer()
    found = scan(tmp_path, sniffer=sniffer)
    assert sorted(found.runs) == ["2014.o12.gz", "caffe.INFO", "cut.log.gz", "failed.log", "junk.log", "ours.log",
                                  "sge.log"]
    # the empty log trainer fit has just opened is a run once its first line is written
    CaffeLog(tmp_path / "empty.log", stream=None).run_header("fresh start")
    assert "empty.log" in scan(tmp_path, sniffer=sniffer).runs
    # a training line past the board's first look still counts: the head is read again as it changes
    with open(tmp_path / "board.log", "a") as f:
        f.write("I0101 10:00:00.000000 1 solver.cpp:217] Iteration 0, lr = 0.01\n")
    assert "board.log" in scan(tmp_path, sniffer=sniffer).runs


def test_a_training_log_is_read_once_while_it_grows(tmp_path, monkeypatch):
    from trainer.board import discover
    log = tmp_path / "train.log"
    log.write_text(HEADER)
    reads = []
    real = discover._sniff
    monkeypatch.setattr(discover, "_sniff", lambda p: reads.append(p) or real(p))
    sniffer = LogSniffer()
    for i in range(3):
        assert list(scan(tmp_path, sniffer=sniffer).runs) == ["train.log"]
        with open(log, "a") as f:
            f.write(f"I1202 10:00:0{i}.000000 1 solver.py:1] Iteration {i}, loss = 1\n")
    assert reads == [log]
