"""`datakit inspect` (datakit.summary): counts, shapes, labels and the contact sheet."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from datakit.formats.datum import encode_datum, encode_datum_bytes
from datakit.db.lmdb_backend import LmdbWriter
from datakit.summary import contact_sheet, inspect_db
from datakit.db import Record


def test_inspect_counts_shapes_labels_and_sheet(tmp_path, cli):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (3, 10 + i % 2, 12), dtype=np.uint8) for i in range(9)]
    values = [encode_datum(im, i % 3 * 2) for i, im in enumerate(imgs)]  # labels 0, 2, 4: gaps
    values.append(encode_datum_bytes(cv2.imencode(".jpg", imgs[0].transpose(1, 2, 0))[1].tobytes(), 2))
    writer = LmdbWriter(tmp_path / "db")
    writer.write([(f"{i:08d}_x{i}".encode(), v) for i, v in enumerate(values)])
    writer.close()

    summary, samples = inspect_db(tmp_path / "db", samples=4)
    assert summary.count == 10 and summary.kinds == {"raw": 9, "encoded": 1}
    assert summary.shapes == {"3x10x12": 5, "3x11x12": 4, "jpeg 10x12": 1}
    assert summary.labels == {0: 3, 2: 4, 4: 3}
    assert [s.key for s in samples] == ["00000000_x0", "00000002_x2", "00000005_x5", "00000007_x7"]

    sheet = tmp_path / "sheet.png"
    r = cli("datakit", "inspect", str(tmp_path / "db"), "--contact-sheet", str(sheet), "--samples", "10",
            "--cell", "32")
    assert r.returncode == 0, r.stderr
    assert "10 records" in r.stdout and "missing [1, 3]" in r.stdout
    img = cv2.imread(str(sheet))
    assert img.shape == (3 * 34 + 2, 4 * 34 + 2, 3)  # 10 cells: 4 columns, 3 rows
    r = cli("datakit", "inspect", str(tmp_path / "db"), "--json")
    assert json.loads(r.stdout)["labels"] == {"0": 3, "2": 4, "4": 3}


def test_contact_sheet_places_scaled_images():
    red = np.zeros((3, 8, 8), np.uint8)
    red[2] = 255
    gray = np.full((1, 4, 8), 128, np.uint8)
    sheet = contact_sheet([Record("a", 0, red), Record("b", 1, gray)], cell=16, columns=2)
    assert sheet.shape == (18 + 2, 2 * 18 + 2, 3)
    assert tuple(sheet[5, 5]) == (0, 0, 255)          # BGR red, scaled 8 -> 16
    assert tuple(sheet[4, 2 + 18 + 4]) == (128, 128, 128)  # gray promoted to 3 channels


def test_a_contact_sheet_of_nothing_is_a_one_line_error():
    from datakit.errors import ConfigError
    with pytest.raises(ConfigError, match="at least one record"):
        contact_sheet([])
