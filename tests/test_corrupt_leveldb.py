"""A damaged LevelDB table is one line naming the database, as a damaged LMDB is."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def test_mean_and_inspect_of_a_damaged_leveldb_are_one_line(tmp_path: Path, cli) -> None:
    try:
        import plyvel
    except ImportError:
        import plyvel_next as plyvel
    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(2)
    lines = []
    for i in range(300):
        cv2.imwrite(str(tmp_path / "img" / f"c{i}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        lines.append(f"c{i}.png {i % 3}\n")
    (tmp_path / "l.txt").write_text("".join(lines))
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
