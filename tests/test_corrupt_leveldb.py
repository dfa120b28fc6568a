"""A damaged LevelDB table or log is one line naming the database, as a damaged LMDB is."""

from __future__ import annotations

from pathlib import Path

from tests.test_corrupt_lmdb import random_images


def test_mean_and_inspect_of_a_damaged_leveldb_are_one_line(tmp_path: Path, cli) -> None:
    try:
        import plyvel
    except ImportError:
        import plyvel_next as plyvel
    random_images(tmp_path, "l.txt", seed=2)
    db = tmp_path / "ldb"
    res = cli("datakit", "convert", str(tmp_path / "img"), str(tmp_path / "l.txt"), str(db), "--backend", "leveldb",
              "--no-progress")
    assert res.returncode == 0, res.stderr
    handle = plyvel.DB(str(db))
    handle.compact_range()  # the records move from the log into a .ldb table
    handle.close()
    table = next(db.glob("*.ldb"))
    with open(table, "r+b") as fh:
        fh.seek(8192 + 16)
        fh.write(b"\xab" * 2000)
    for args in (["mean", str(db), str(tmp_path / "m.binaryproto")], ["inspect", str(db)]):
        res = cli("datakit", *args)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.strip().splitlines()[-1].startswith(f"datakit: error: {db}: the LevelDB database is "
                                                              "corrupt (Corruption: ")


def test_a_damaged_log_is_refused_not_replayed_without_the_records_it_held(tmp_path: Path, cli) -> None:
    """A small conversion's records are all in LevelDB's log. Opened without paranoid checks, LevelDB
    skipped the damaged part, wrote what was left into a table and deleted the log: every reader
    (mean, inspect, trainer) then saw fewer records, with no error, for good."""
    random_images(tmp_path, "l.txt", seed=3)
    db = tmp_path / "ldb"
    res = cli("datakit", "convert", str(tmp_path / "img"), str(tmp_path / "l.txt"), str(db), "--backend", "leveldb",
              "--no-progress")
    assert res.returncode == 0, res.stderr
    [log] = db.glob("*.log")
    data = bytearray(log.read_bytes())
    assert len(data) > 20_000
    data[len(data) // 2:len(data) // 2 + 100] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 100])
    log.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in db.iterdir() if p.name not in ("LOG", "LOG.old", "LOCK")}
    for args in (["inspect", str(db)], ["mean", str(db), str(tmp_path / "m.binaryproto")]):
        res = cli("datakit", *args)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.strip().splitlines()[-1] == (f"datakit: error: {db}: the LevelDB database is corrupt "
                                                       "(Corruption: checksum mismatch); it was left as it is")
    after = {p.name: p.read_bytes() for p in db.iterdir() if p.name not in ("LOG", "LOG.old", "LOCK")}
    assert after == before
