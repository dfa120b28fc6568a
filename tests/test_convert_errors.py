"""`datakit convert` refuses to produce a database that would only hide a mistake."""

from __future__ import annotations

import cv2
import numpy as np


def test_missing_list_is_one_line(tmp_path, cli):
    result = cli("datakit", "convert", str(tmp_path), str(tmp_path / "nope.txt"), str(tmp_path / "db"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"datakit: error: {tmp_path / 'nope.txt'}: list file not found"


def test_nothing_readable_writes_no_database(tmp_path, cli):
    (tmp_path / "list.txt").write_text("a.jpg 0\nb.jpg 1\n")
    result = cli("datakit", "convert", str(tmp_path), str(tmp_path / "list.txt"), str(tmp_path / "db"))
    assert result.returncode == 1
    assert "none of its 2 images could be read" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "db").exists() and not list(tmp_path.glob("db*"))


def test_one_readable_image_is_enough(tmp_path, cli):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "list.txt").write_text("a.png 0\nmissing.png 0\n")
    result = cli("datakit", "convert", str(tmp_path), str(tmp_path / "list.txt"), str(tmp_path / "db"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "db" / "data.mdb").is_file()
