"""Caffe image lists: parsing as Caffe does, and the checks Caffe never made."""

from __future__ import annotations

from pathlib import Path

import pytest

from datakit.errors import ListError
from datakit.imagelist import check_list, iter_list, read_list, safe_join, write_list


def write(tmp_path: Path, text: str, name: str = "list.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_label_is_the_last_field_so_paths_may_have_spaces(tmp_path):
    entries = read_list(write(tmp_path, "my photos/a b.jpg 0\nc.jpg\t1\n\n"))
    assert [(e.path, e.label, e.line) for e in entries] == [("my photos/a b.jpg", 0, 1), ("c.jpg", 1, 2)]


@pytest.mark.parametrize("line, fragment", [
    ("a.jpg x", "label 'x' is not an integer"),
    ("a.jpg -1", "label -1 is negative"),
    ("a.jpg", "expected 'PATH LABEL'"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, fragment):
    path = write(tmp_path, f"ok.jpg 0\n{line}\n")
    result = check_list(path)
    assert result.problems == [f"{path}:2: " + result.problems[0].split(": ", 1)[1]]
    assert fragment in result.problems[0]


def test_labels_must_start_at_zero(tmp_path):
    path = write(tmp_path, "a.jpg 1\nb.jpg 2\n")
    result = check_list(path)
    assert len(result.problems) == 1
    assert result.problems[0].startswith(f"{path}:1: labels start at 1, not 0")
    assert check_list(path, allow_label_gaps=True).ok


def test_label_gaps_are_reported_at_the_first_line_above_the_gap(tmp_path):
    path = write(tmp_path, "a.jpg 0\nb.jpg 0\nc.jpg 3\nd.jpg 4\ne.jpg 6\n")
    problems = check_list(path).problems
    assert problems[0].startswith(f"{path}:3: label 3 leaves a gap: no record has label 1..2")
    assert problems[1].startswith(f"{path}:5: label 6 leaves a gap: no record has label 5 ")
    assert len(problems) == 2


@pytest.mark.parametrize("bad", ["../etc/passwd", "/etc/passwd", "a/../../b.jpg", "C:\\x.jpg"])
def test_paths_that_escape_the_root_are_refused(tmp_path, bad):
    path = write(tmp_path, f"ok.jpg 0\n{bad} 0\n")
    problems = check_list(path).problems
    assert len(problems) == 1 and problems[0].startswith(f"{path}:2: path") and "escapes" in problems[0]
    with pytest.raises(ListError):
        safe_join(tmp_path, bad)


def test_absolute_paths_allowed_on_request(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")
    path = write(tmp_path, f"{tmp_path / 'x.jpg'} 0\n")
    assert not check_list(path).ok
    assert check_list(path, allow_absolute=True, check_files=True).ok


def test_duplicates_name_both_lines(tmp_path):
    path = write(tmp_path, "a.jpg 0\nb.jpg 1\na.jpg 1\n")
    assert check_list(path).problems == [f"{path}:3: duplicate of line 1 ('a.jpg')"]


def test_missing_files_when_asked(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img/a.jpg").write_bytes(b"x")
    path = write(tmp_path, "a.jpg 0\nb.jpg 1\n")
    assert check_list(path, root=tmp_path / "img").ok
    problems = check_list(path, root=tmp_path / "img", check_files=True).problems
    assert problems == [f"{path}:2: file not found: {tmp_path / 'img/b.jpg'}"]


def test_write_list_round_trip(tmp_path):
    path = tmp_path / "out/list.txt"
    assert write_list(path, [("a b.jpg", 0), ("c.jpg", 1)]) == 2
    assert path.read_text() == "a b.jpg 0\nc.jpg 1\n"
    assert [(e.path, e.label) for e in iter_list(path)] == [("a b.jpg", 0), ("c.jpg", 1)]
    assert not list(path.parent.glob(".*.part"))


def test_write_list_failure_keeps_old_file(tmp_path):
    path = write(tmp_path, "old.jpg 0\n")
    with pytest.raises(ListError):
        write_list(path, [("fine.jpg", 0), ("bad\nname.jpg", 1)])
    assert path.read_text() == "old.jpg 0\n"
    assert not list(tmp_path.glob(".*.part"))


def test_cli_check_list_valid(tmp_path, cli):
    path = write(tmp_path, "a.jpg 0\nb.jpg 1\nc.jpg 1\n")
    result = cli("datakit", "check-list", str(path))
    assert result.returncode == 0
    assert result.stdout.strip() == f"{path}: 3 records, 2 classes (labels 0..1)"


def test_cli_check_list_gap_one_line_per_problem(tmp_path, cli):
    path = write(tmp_path, "a.jpg 0\nb.jpg 2\nb.jpg 2\n")
    result = cli("datakit", "check-list", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"{path}:3: duplicate of line 2 ('b.jpg')"
    assert lines[1].startswith(f"{path}:2: label 2 leaves a gap")
    assert len(lines) == 2
    assert cli("datakit", "check-list", str(path), "--allow-label-gaps").returncode == 1  # duplicate remains


def test_cli_check_list_root_checks_files(tmp_path, cli):
    path = write(tmp_path, "a.jpg 0\n")
    result = cli("datakit", "check-list", str(path), "--root", str(tmp_path))
    assert result.returncode == 1 and "file not found" in result.stderr
