"""A UTF-8 BOM at the start of an image list or a manifest CSV (Windows editors, spreadsheets) is ignored."""

from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import numpy as np

from datakit.imagelist import check_list
from datakit.manifest import open_manifest, read_manifest

BOM = "\ufeff"


def images(root: Path, n: int = 3) -> None:
    root.mkdir()
    for i in range(n):
        cv2.imwrite(str(root / f"c{i}.png"), np.full((4, 4, 3), i, np.uint8))


def test_check_list_ignores_a_leading_bom(tmp_path: Path, cli) -> None:
    images(tmp_path / "img")
    path = tmp_path / "l_bom.txt"
    path.write_text(BOM + "c0.png 0\nc1.png 1\nc2.png 2\n", encoding="utf-8")
    result = check_list(path, root=tmp_path / "img", check_files=True)
    assert result.problems == [] and result.entries[0].path == "c0.png"
    res = cli("datakit", "check-list", str(path), "--root", str(tmp_path / "img"))
    assert res.returncode == 0, res.stderr


def test_convert_writes_the_first_record_of_a_list_with_a_bom(tmp_path: Path, cli) -> None:
    images(tmp_path / "img")
    path = tmp_path / "l_bom.txt"
    path.write_text(BOM + "c0.png 0\nc1.png 1\nc2.png 2\n", encoding="utf-8")
    res = cli("datakit", "convert", str(tmp_path / "img"), str(path), str(tmp_path / "d"), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "3 records written" in res.stdout + res.stderr and "0 skipped" in res.stdout + res.stderr


def test_manifest_header_with_a_bom_names_its_columns(tmp_path: Path) -> None:
    text = BOM + "image_url,label,_split\nhttp://a/1.jpg,0,train\nhttp://a/2.jpg,1,test\n"
    plain = tmp_path / "m.csv"
    plain.write_text(text, encoding="utf-8")
    packed = tmp_path / "m2.csv.gz"
    packed.write_bytes(gzip.compress(text.encode("utf-8")))
    for path in (plain, packed):
        rows = read_manifest(path, id_column="")
        assert [(r.url, r.label, r.split) for r in rows] == [("http://a/1.jpg", 0, "train"),
                                                            ("http://a/2.jpg", 1, "test")]
    _, rows, _ = open_manifest(plain, id_column="")
    assert rows[0].url == "http://a/1.jpg"
