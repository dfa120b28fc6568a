"""Labels must fit Caffe's int32 Datum.label: check-list, convert and assemble's manifests refuse larger ones."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from datakit.errors import ListError
from datakit.imagelist import check_list
from datakit.manifest import read_manifest


@pytest.mark.parametrize("text", ["2147483648", "99999999999999999999"])
def test_labels_above_int32_are_refused_naming_the_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "l.txt"
    path.write_text(f"c0.png 0\nc1.png 1\nc2.png {text}\n")
    result = check_list(path, allow_label_gaps=True)
    assert result.problems == [f"{path}:3: label {text} does not fit Caffe's int32 Datum.label "
                               "(labels must be 0..2147483647)"]


def test_the_largest_int32_label_is_accepted() -> None:
    from datakit.imagelist import LABEL_MAX, parse_label
    assert parse_label(str(LABEL_MAX), "x:1") == 2**31 - 1
    with pytest.raises(ListError, match="x:1: label 2147483648 does not fit"):
        parse_label("2147483648", "x:1")


def test_check_list_cli_refuses_even_with_allow_label_gaps(tmp_path: Path, cli) -> None:
    path = tmp_path / "l.txt"
    path.write_text("c0.png 0\nc1.png 2147483648\n")
    result = cli("datakit", "check-list", str(path), "--allow-label-gaps")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"{path}:2: label 2147483648 does not fit Caffe's int32 "
                                                  "Datum.label (labels must be 0..2147483647)"]


def test_convert_refuses_and_writes_nothing(tmp_path: Path, cli) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"c{i}.png"), np.full((4, 4, 3), i, np.uint8))
    path = tmp_path / "l.txt"
    path.write_text("c0.png 0\nc1.png 1\nc2.png 2147483648\n")
    result = cli("datakit", "convert", str(tmp_path), str(path), str(tmp_path / "d"))
    assert result.returncode == 1
    assert f"{path}:3: label 2147483648 does not fit" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "d").exists()


def test_manifest_labels_above_int32_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "m.csv"
    bad.write_text(",image_url,label,_split\n1,http://a/1.jpg,0,train\n2,http://a/2.jpg,99999999999999999999,train\n")
    with pytest.raises(ListError, match=r"m.csv:3: label 99999999999999999999 does not fit Caffe's int32"):
        read_manifest(bad)


def test_assemble_refuses_the_manifest_before_any_download(tmp_path: Path, cli) -> None:
    manifest = tmp_path / "big.csv"
    manifest.write_text(",image_url,label,_split\n1,http://127.0.0.1:9/1.jpg,0,train\n"
                        "2,http://127.0.0.1:9/2.jpg,2147483648,train\n")
    res = cli("datakit", "assemble", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--no-progress")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"datakit: error: {manifest}:3: label 2147483648 does not fit "
                                               "Caffe's int32 Datum.label (labels must be 0..2147483647)"]
    assert not (tmp_path / "out" / "train.txt").exists()
