"""`datakit idx-export`: the real MNIST test files to PNGs and a list."""

from __future__ import annotations

import cv2
import numpy as np

from datakit.idx import read_mnist
from datakit.imagelist import read_list


def test_export_first_images_of_real_mnist(shared_data, tmp_path, cli):
    mnist = shared_data / "mnist"
    images, labels = mnist / "t10k-images-idx3-ubyte.gz", mnist / "t10k-labels-idx1-ubyte.gz"
    result = cli("datakit", "idx-export", str(images), str(labels), str(tmp_path / "out"), "--limit", "25")
    assert result.returncode == 0, result.stderr
    entries = read_list(tmp_path / "out/list.txt", root=tmp_path / "out", check_files=True,
                        allow_label_gaps=True)
    assert [e.label for e in entries[:10]] == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # PROVENANCE.md
    x, _ = read_mnist(images, labels)
    png = cv2.imread(str(tmp_path / "out" / entries[3].path), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(png, x[3])


def test_mismatched_files_are_one_line_error(shared_data, tmp_path, cli):
    mnist = shared_data / "mnist"
    result = cli("datakit", "idx-export", str(mnist / "t10k-images-idx3-ubyte.gz"),
                 str(mnist / "train-labels-idx1-ubyte.gz"), str(tmp_path / "out"))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "10000 images" in result.stderr


def test_export_shows_a_bar_when_asked_and_none_when_told_not_to(shared_data, tmp_path, cli):
    """Exporting MNIST's 60,000 training images took 20 s with nothing on the screen."""
    mnist = shared_data / "mnist"
    args = (str(mnist / "t10k-images-idx3-ubyte.gz"), str(mnist / "t10k-labels-idx1-ubyte.gz"), "--limit", "30")
    shown = cli("datakit", "idx-export", *args[:2], str(tmp_path / "a"), *args[2:], "--progress")
    assert shown.returncode == 0 and "idx-export" in shown.stderr and "30/30" in shown.stderr, shown.stderr
    quiet = cli("datakit", "idx-export", *args[:2], str(tmp_path / "b"), *args[2:], "--no-progress")
    assert quiet.returncode == 0 and quiet.stderr == ""
