"""Acceptance: Caffe's trained LeNet scores the real MNIST test set through our whole toolchain.

MNIST idx -> PNG files + Caffe list (datakit.idx) -> LMDB (`datakit convert --gray`) ->
`trainer test` on the shipped models/lenet/lenet_train_test.prototxt with the real
lenet_iter_10000.caffemodel. PROVENANCE.md records 0.9914 accuracy and 0.02727 loss.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from datakit.idx import export_images, read_mnist

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist_test_lmdb(shared_data, tmp_path_factory):
    from tests.conftest import run_cli
    work = tmp_path_factory.mktemp("mnist")
    images, labels = read_mnist(shared_data / "mnist/t10k-images-idx3-ubyte.gz",
                                shared_data / "mnist/t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    export_images(images, labels, work / "png", work / "test.txt", subdir="t10k")
    res = run_cli("datakit", "convert", str(work / "png"), str(work / "test.txt"),
                  str(work / "mnist_test_lmdb"), "--gray", "--no-progress", cwd=work)
    assert res.returncode == 0, res.stderr
    return work


@pytest.mark.slow
def test_lenet_scores_mnist_through_trainer_test(mnist_test_lmdb, shared_data, cli):
    res = cli("trainer", "test", "--model", str(ROOT / "models/lenet/lenet_train_test.prototxt"),
              "--weights", str(shared_data / "models/lenet/lenet_iter_10000.caffemodel"),
              "--iterations", "100", "--device", "cpu", cwd=mnist_test_lmdb)
    assert res.returncode == 0, res.stderr
    final = dict(re.findall(r"^(\w+) = ([-\d.e]+)$", res.stdout, flags=re.M))
    accuracy, loss = float(final["accuracy"]), float(final["loss"])
    assert accuracy >= 0.99
    assert accuracy == pytest.approx(0.9914, abs=1e-4)  # PROVENANCE.md: an independent NumPy forward (no Caffe run here)
    assert loss == pytest.approx(0.02727, abs=2e-4)
    batch_lines = re.findall(r"^Batch (\d+), accuracy = ", res.stdout, flags=re.M)
    assert len(batch_lines) == 100


def test_lenet_classify_first_digits(mnist_test_lmdb, shared_data, cli):
    pngs = sorted((mnist_test_lmdb / "png/t10k").glob("*.png"))[:10]
    res = cli("trainer", "classify", *map(str, pngs),
              "--model", str(ROOT / "models/lenet/lenet_deploy.prototxt"),
              "--weights", str(shared_data / "models/lenet/lenet_iter_10000.caffemodel"),
              "--center-only", "--input-scale", "0.00390625", "--top-k", "2", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    top1 = [int(m) for m in re.findall(r"^  1\. [\d.]+  \[(\d+)\]", res.stdout, flags=re.M)]
    assert top1 == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def _top1(stdout: str) -> list[tuple[int, float]]:
    return [(int(c), float(p)) for p, c in re.findall(r"^  1\. ([\d.]+)  \[(\d+)\]", stdout, flags=re.M)]


def test_lenet_classify_takes_its_preprocessing_from_the_train_net(mnist_test_lmdb, shared_data, cli):
    """--train-net alone gives what LeNet's hand-set flags give (scale 1/256, one center crop); Caffe's
    classify.py defaults (0..255 pixels, mirrored crops) are what made it answer about 50/50."""
    pngs = [str(p) for p in sorted((mnist_test_lmdb / "png/t10k").glob("*.png"))[:10]]
    net = ["--model", str(ROOT / "models/lenet/lenet_deploy.prototxt"),
           "--weights", str(shared_data / "models/lenet/lenet_iter_10000.caffemodel"), "--device", "cpu"]
    by_hand = cli("trainer", "classify", *pngs, *net, "--center-only", "--input-scale", "0.00390625")
    taken = cli("trainer", "classify", *pngs, *net, "--train-net", str(ROOT / "models/lenet/lenet_train_test.prototxt"))
    defaults = cli("trainer", "classify", *pngs, *net)
    for res in (by_hand, taken, defaults):
        assert res.returncode == 0, res.stderr
    assert taken.stdout == by_hand.stdout
    assert [c for c, _ in _top1(taken.stdout)] == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert min(p for _, p in _top1(taken.stdout)) > 0.9
    assert "lenet_train_test.prototxt layer mnist (Data, TEST)" in taken.stderr
    assert "input scale 0.00390625" in taken.stderr and "center crop" in taken.stderr
    assert sum(p < 0.9 for _, p in _top1(defaults.stdout)) >= 3    # the defaults really are wrong for LeNet
