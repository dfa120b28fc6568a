"""`datakit split`: the paper's class halves byte for byte, renumbering, reduced lists, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from datakit.errors import ListError
from datakit.splits import random_halves, reduce_per_class, split_halves_from_files, split_random_halves

# Published by the authors in yosinski/convnet_transfer ilsvrc12/make_reduced_datasets.sh.
PUBLISHED_VALID_MD5 = {
    ("0", "A"): "2f10009e20d77eb7007cf70674958b94", ("0", "B"): "cce39b383d681345c873faf2c0c28d33",
    ("1", "A"): "9ab48b6420504e32ff4498e7d8569f8b", ("1", "B"): "57522f5e2aa69547846089f5197c8a6b",
    ("2", "A"): "03d05b6565ab9176baccdd05d746bfd1", ("2", "B"): "18de8b37378e07e60dc602b6130eeeb2",
    ("3", "A"): "46086440ddde128f169f23331998499d", ("3", "B"): "e5f9f0895fd0d49a8ac0b804ec891282",
    ("natman", "A"): "4fb63c72229ba07106a558127192cb9f", ("natman", "B"): "f03be5732fb6bc7928ee53397b043613",
}
WHOLE_VALID_MD5 = "b6284a7c08fba47457c2c1f6049a156e"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ilsvrc12(shared_data):
    folder = shared_data / "ilsvrc12"
    assert md5(folder / "whole_valid" / "files.txt") == WHOLE_VALID_MD5
    return folder


@pytest.mark.parametrize("seed", ["0", "1", "2", "3", "natman"])
def test_the_ten_published_validation_halves_byte_for_byte(cli, ilsvrc12, tmp_path, seed):
    args = ["--seed", seed] if seed != "natman" else [
        "--halves", str(ilsvrc12 / "half_nat_idx.txt"), str(ilsvrc12 / "half_man_idx.txt")]
    out = tmp_path / f"half{seed}"
    done = cli("datakit", "split", str(ilsvrc12 / "whole_valid" / "files.txt"), str(out), *args)
    assert done.returncode == 0, done.stderr
    for half in "AB":
        assert md5(out / half / "files.txt") == PUBLISHED_VALID_MD5[(seed, half)]
    manifest = json.loads((out / "split.json").read_text())
    assert manifest["source_sha256"] == hashlib.sha256((ilsvrc12 / "whole_valid" / "files.txt").read_bytes()).hexdigest()
    assert manifest["counts"]["A"] + manifest["counts"]["B"] == 50000
    assert sorted(manifest["classes"]["A"] + manifest["classes"]["B"]) == list(range(1000))
    idxmap = (out / "A" / "idxmap.txt").read_text().splitlines()
    assert idxmap[0] == "# Orig_idx new_idx"
    assert [int(line.split()[0]) for line in idxmap[1:]] == manifest["classes"]["A"]
    assert [int(line.split()[1]) for line in idxmap[1:]] == list(range(len(idxmap) - 1))


def write_list(path: Path, labels: list[int]) -> Path:
    path.write_text("".join(f"img/{i:03d} x.png {label}\n" for i, label in enumerate(labels)))
    return path


def test_odd_class_count_renumbers_by_rank_keeps_order_and_is_deterministic(tmp_path):
    labels = [i % 7 for i in range(70)][::-1]
    src = write_list(tmp_path / "train.txt", labels)
    first = split_random_halves(src, tmp_path / "s1", seed=5)
    again = split_random_halves(src, tmp_path / "s2", seed=5)
    assert first.groups == again.groups
    assert len(first.groups["A"]) == 3 and len(first.groups["B"]) == 4
    for half in "AB":
        assert (tmp_path / "s1" / half / "files.txt").read_bytes() == (tmp_path / "s2" / half / "files.txt").read_bytes()
        rank = {old: new for new, old in enumerate(first.groups[half])}
        expected = [f"img/{i:03d} x.png {rank[label]}" for i, label in enumerate(labels) if label in rank]
        assert (tmp_path / "s1" / half / "files.txt").read_text().splitlines() == expected
    assert random_halves(7, 5) == (first.groups["A"], first.groups["B"])


def test_train_and_valid_lists_get_the_same_class_groups(tmp_path):
    train = write_list(tmp_path / "train.txt", [i % 10 for i in range(100)])
    valid = write_list(tmp_path / "valid.txt", [9 - i % 10 for i in range(30)])
    a = split_random_halves(train, tmp_path / "train", seed=1)
    b = split_random_halves(valid, tmp_path / "valid", seed=1)
    assert a.groups == b.groups
    assert (tmp_path / "train/A/idxmap.txt").read_text() == (tmp_path / "valid/A/idxmap.txt").read_text()


def test_per_class_keeps_the_first_n_of_each_class_with_labels(tmp_path):
    labels = [0, 1, 0, 2, 0, 1, 2, 2, 1, 0]
    src = write_list(tmp_path / "l.txt", labels)
    result = reduce_per_class(src, tmp_path / "r", 2)
    kept = [line.rsplit(" ", 1) for line in (tmp_path / "r" / "files.txt").read_text().splitlines()]
    assert [(p, int(lab)) for p, lab in kept] == [
        ("img/000 x.png", 0), ("img/001 x.png", 1), ("img/002 x.png", 0), ("img/003 x.png", 2),
        ("img/005 x.png", 1), ("img/006 x.png", 2)]
    assert result.counts["kept"] == 6


def test_label_gap_names_file_and_line(cli, tmp_path):
    src = write_list(tmp_path / "gap.txt", [0, 1, 3, 1])
    done = cli("datakit", "split", str(src), str(tmp_path / "out"))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"datakit: error: {src}:3: label 3 leaves a gap: no line has label 2 (a split needs labels 0..K-1)"]
    assert not (tmp_path / "out" / "A" / "files.txt").exists()


def test_a_seed_numpy_cannot_take_is_one_line(cli, tmp_path):
    """--seed -1 ended in NumPy's ValueError traceback (legacy seeding takes 32-bit words)."""
    src = write_list(tmp_path / "list.txt", [0, 1, 2, 3])
    for seed in ("-1", str(2 ** 32)):
        done = cli("datakit", "split", str(src), str(tmp_path / "out"), "--seed", seed)
        assert (done.returncode, done.stderr) == (
            1, f"datakit: error: --seed {seed}: a seed must be between 0 and 2**32 - 1 (the paper's are 0..3)\n")
    assert not (tmp_path / "out" / "A").exists()


def test_a_seed_that_would_be_dropped_is_refused(cli, tmp_path):
    """--per-class keeps the first N lines and index-file halves take the files' classes: a --seed
    given with them changed nothing, with no word."""
    src = write_list(tmp_path / "list.txt", [0, 1, 2, 3, 0, 1, 2, 3])
    (tmp_path / "a.txt").write_text("0\n1\n")
    (tmp_path / "b.txt").write_text("2\n3\n")
    for mode, what in ((["--per-class", "1"], "--per-class keeps the first N lines of each class"),
                       (["--halves", str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], "--halves FILE_A FILE_B")):
        done = cli("datakit", "split", str(src), str(tmp_path / "out"), *mode, "--seed", "3")
        assert done.returncode == 1 and done.stderr.startswith(f"datakit: error: --seed: only random halves are "
                                                               f"seeded; {what}"), done.stderr
        assert cli("datakit", "split", str(src), str(tmp_path / "out"), *mode).returncode == 0
    assert cli("datakit", "split", str(src), str(tmp_path / "r"), "--halves", "random", "--seed", "3").returncode == 0


def test_index_files_overlap_empty_class_and_missing_classes_are_refused(tmp_path):
    src = write_list(tmp_path / "l.txt", [0, 1, 2, 3])
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("0\n1\n")
    b.write_text("2\n1\n3\n")
    with pytest.raises(ListError, match=rf"^{b}:2: class 1 is also in {a} \(line 2\)"):
        split_halves_from_files(src, tmp_path / "o", a, b)
    b.write_text("2\n3\n9\n")
    with pytest.raises(ListError, match=rf"^{b}:3: class 9 has no images in {src}"):
        split_halves_from_files(src, tmp_path / "o", a, b)
    b.write_text("2\n")
    with pytest.raises(ListError, match="1 classes .* are in neither index file: 3"):
        split_halves_from_files(src, tmp_path / "o", a, b)
    b.write_text("2\nthree\n")
    with pytest.raises(ListError, match=rf"^{b}:2: expected a class index"):
        split_halves_from_files(src, tmp_path / "o", a, b)
    b.write_text("2\n3\n")
    result = split_halves_from_files(src, tmp_path / "o", a, b)
    assert result.groups == {"A": [0, 1], "B": [2, 3]}
    assert (tmp_path / "o" / "B" / "files.txt").read_text() == "img/002 x.png 0\nimg/003 x.png 1\n"


def test_num_classes_bounds_labels_and_flags_empty_named_classes(tmp_path):
    src = write_list(tmp_path / "l.txt", [0, 1, 2])
    with pytest.raises(ListError, match=rf"^{src}:3: label 2 is out of range for --num-classes 2"):
        split_random_halves(src, tmp_path / "o", 0, num_classes=2)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("0\n3\n")
    b.write_text("1\n2\n")
    with pytest.raises(ListError, match=rf"^{a}:2: class 3 has no images"):
        split_halves_from_files(src, tmp_path / "o", a, b, num_classes=4)
