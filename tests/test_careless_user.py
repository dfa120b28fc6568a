"""Issue 12's careless user: empty lists, floods of warnings, a wrong root, next steps that work."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from datakit.db import PROGRESS_NAME, incomplete_path, open_reader
from tests.conftest import wait_until_written, ROOT
from tests.test_convert import make_images, write_list


def _db_bytes(db: Path) -> list[tuple[bytes, bytes]]:
    with open_reader(db) as reader:
        return list(reader.raw_items())


def test_check_list_refuses_an_empty_list(tmp_path, cli):
    for text in ("", "\n  \n"):
        lst = tmp_path / "empty.txt"
        lst.write_text(text)
        res = cli("datakit", "check-list", str(lst))
        assert res.returncode == 1
        [line] = res.stderr.strip().splitlines()
        assert str(lst) in line and "lists no images" in line


def test_convert_of_an_empty_list_never_replaces_a_good_database(tmp_path, cli):
    entries = make_images(tmp_path, 3)
    good = write_list(tmp_path / "good.txt", entries)
    db = tmp_path / "db"
    assert cli("datakit", "convert", str(tmp_path / "img"), str(good), str(db), "--no-progress").returncode == 0
    before = _db_bytes(db)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    for extra in ((), ("--overwrite",)):
        res = cli("datakit", "convert", str(tmp_path / "img"), str(empty), str(db), "--no-progress", *extra)
        assert res.returncode == 1
        [line] = res.stderr.strip().splitlines()
        assert f"{empty}: lists no images" in line
        assert _db_bytes(db) == before
        assert not incomplete_path(db).exists()
    # a fresh output gets no empty database either
    res = cli("datakit", "convert", str(tmp_path / "img"), str(empty), str(tmp_path / "new"), "--no-progress")
    assert res.returncode == 1 and not list(tmp_path.glob("new*"))


def test_sharded_convert_of_an_empty_list_with_overwrite_keeps_the_good_database(tmp_path):
    # the cluster path reads and checks the list before its work folder is touched, as the local one does
    from datakit.convert import ConvertOptions, convert
    from datakit.convert.sharded import convert_sharded
    from datakit.errors import ListError
    from datakit.parallel import InlineExecutor
    entries = make_images(tmp_path, 3)
    db = tmp_path / "db"
    convert(tmp_path / "img", write_list(tmp_path / "good.txt", entries), db, ConvertOptions(workers=1))
    before = _db_bytes(db)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ListError, match="lists no images"):
        convert_sharded(tmp_path / "img", empty, db, ConvertOptions(overwrite=True), InlineExecutor())
    assert _db_bytes(db) == before and not incomplete_path(db).exists()


def test_convert_caps_skipped_image_warnings_and_names_a_wrong_root(tmp_path, cli):
    entries = make_images(tmp_path, 2)
    entries += [(f"gone/{i}.jpg", 0) for i in range(25)]
    lst = write_list(tmp_path / "list.txt", entries)
    report = tmp_path / "report.json"
    res = cli("datakit", "convert", str(tmp_path / "img"), str(lst), str(tmp_path / "db"), "--no-progress",
              "--report", str(report))
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len([x for x in lines if x.endswith("; skipped")]) == 10
    assert "warning: ... and 15 more skipped images (25 in all" in res.stderr
    assert f"25 of 27 files missing under {tmp_path / 'img'}: is the image root right?" in res.stderr
    assert len(lines) <= 14, lines
    assert len(json.loads(report.read_text())["skipped"]) == 25


def test_convert_all_missing_says_the_root_is_wrong(tmp_path, cli):
    make_images(tmp_path, 1)
    lst = write_list(tmp_path / "list.txt", [(f"x/{i}.jpg", 0) for i in range(40)])
    res = cli("datakit", "convert", str(tmp_path / "img"), str(lst), str(tmp_path / "db"), "--no-progress")
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert f"40 of 40 files missing under {tmp_path / 'img'}: is the image root right?" in last
    assert len(res.stderr.strip().splitlines()) <= 12


def test_convert_caps_duplicate_line_warnings_and_reports_all(tmp_path, cli):
    entries = make_images(tmp_path, 2)
    lst = write_list(tmp_path / "list.txt", entries + [entries[0]] * 30)
    report = tmp_path / "report.json"
    res = cli("datakit", "convert", str(tmp_path / "img"), str(lst), str(tmp_path / "db"), "--no-progress",
              "--report", str(report))
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("duplicate of line 1") == 10
    assert "... and 20 more list warnings (30 in all" in res.stderr
    warnings = json.loads(report.read_text())["warnings"]
    assert len(warnings) == 30 and all("duplicate of line 1" in w for w in warnings)


def test_check_list_under_a_wrong_root_says_so_and_reports_every_file(tmp_path, cli):
    lst = write_list(tmp_path / "list.txt", [(f"a/{i}.jpg", i % 2) for i in range(50)])
    report = tmp_path / "check.json"
    res = cli("datakit", "check-list", str(lst), "--root", str(tmp_path / "wrong"), "--report", str(report))
    assert res.returncode == 1
    # one line: the 10 missing files it printed first only hid the line that says what is wrong
    assert res.stderr.strip().splitlines() == [
        f"50 of 50 files missing under {tmp_path / 'wrong'}: is --root right? (the first: {lst}:1: file not found: "
        f"{tmp_path / 'wrong' / 'a/0.jpg'}); all of them in {report}"]
    data = json.loads(report.read_text())
    assert len(data["problems"]) == 50 and data["counts"] == {"missing-file": 50}


def test_without_report_the_flood_summary_says_how_to_get_them_all(tmp_path, cli):
    """Without --report there is no report file to point at (it used to say 'all of them in the --report file')."""
    lst = write_list(tmp_path / "list.txt", [(f"a/{i}.jpg", i % 2) for i in range(50)])
    res = cli("datakit", "check-list", str(lst), "--root", str(tmp_path / "wrong"))
    assert res.returncode == 1
    [line] = res.stderr.strip().splitlines()
    assert line.endswith("); --report FILE lists them all")


def _convert(tmp_path: Path, lst: Path, db: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cli.datakit_main", "convert", str(tmp_path / "img"), str(lst), str(db),
            "--workers", "1", "--commit-every", "5", "--checkpoint-every", "1", "--no-progress", *extra]


def test_interrupted_overwrite_suggests_a_command_that_finishes_the_job(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    entries = make_images(tmp_path, 300, size=(120, 160))
    small = write_list(tmp_path / "small.txt", entries[:3])
    big = write_list(tmp_path / "big.txt", entries)
    db = tmp_path / "db"
    subprocess.run(_convert(tmp_path, small, db), env=env, check=True, capture_output=True)
    proc = subprocess.Popen(_convert(tmp_path, big, db, "--overwrite"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    progress = incomplete_path(db) / PROGRESS_NAME
    wait_until_written(progress, proc, 10)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    [line] = err.strip().splitlines()
    assert "to finish, run: datakit convert " in line
    suggested = shlex.split(line.split("to finish, run: ", 1)[1])
    assert "--overwrite" not in suggested and "--resume" in suggested
    res = subprocess.run([sys.executable, "-m", "cli.datakit_main", *suggested[1:]], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "resumed at record" in res.stdout
    assert len(_db_bytes(db)) == 300


def test_sigterm_stops_like_ctrl_c_with_the_command_that_finishes(tmp_path):
    """`kill PID` (or a job scheduler's stop) exited 143 with no word of what was kept or how to go on."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    entries = make_images(tmp_path, 300, size=(120, 160))
    lst = write_list(tmp_path / "list.txt", entries)
    db = tmp_path / "db"
    proc = subprocess.Popen(_convert(tmp_path, lst, db), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_until_written(incomplete_path(db) / PROGRESS_NAME, proc, 10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    [line] = err.strip().splitlines()
    assert line.startswith("datakit: stopped by SIGTERM; ") and "to finish, run: datakit convert " in line
    suggested = shlex.split(line.split("to finish, run: ", 1)[1])
    res = subprocess.run([sys.executable, "-m", "cli.datakit_main", *suggested[1:]], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "resumed at record" in res.stdout, res.stderr
    assert len(_db_bytes(db)) == 300


def test_a_regular_file_where_the_database_goes_gets_advice_that_works(tmp_path, cli):
    entries = make_images(tmp_path, 2)
    lst = write_list(tmp_path / "list.txt", entries)
    db = tmp_path / "db"
    db.write_text("precious")
    for extra in ((), ("--overwrite",)):
        res = cli("datakit", "convert", str(tmp_path / "img"), str(lst), str(db), "--no-progress", *extra)
        assert res.returncode == 1
        [line] = res.stderr.strip().splitlines()
        assert f"{db}: exists and is a file" in line and "move it away" in line
        assert "pass --overwrite" not in line
        assert db.read_text() == "precious"
    db.rename(tmp_path / "precious.txt")  # what the message says to do
    res = cli("datakit", "convert", str(tmp_path / "img"), str(lst), str(db), "--no-progress")
    assert res.returncode == 0, res.stderr


def test_the_library_message_after_an_interrupted_overwrite_does_not_contradict_it(tmp_path):
    from datakit.convert import ConvertInterrupted

    assert "with --resume to finish" in str(ConvertInterrupted(3, tmp_path))
    assert "with --resume in place of --overwrite to finish" in str(ConvertInterrupted(3, tmp_path, True))


def test_warning_cap_shows_the_first_ones_and_keeps_all():
    from datakit.warncap import WarningCap, missing_under_root

    shown: list[str] = []
    cap = WarningCap(shown.append, "things", limit=3, where_all="r.json")
    for i in range(7):
        cap(f"w{i}")
    cap.finish()
    cap.finish()  # once only
    assert shown == ["w0", "w1", "w2", "... and 4 more things (7 in all; all of them in r.json)"]
    assert cap.messages == [f"w{i}" for i in range(7)]
    quiet: list[str] = []
    few = WarningCap(quiet.append, "things", limit=3)
    few("a")
    few.finish()
    assert quiet == ["a"]
    assert missing_under_root(5, 10, "R", "--root") is None
    assert missing_under_root(6, 10, "R", "--root") == "6 of 10 files missing under R: is --root right?"


def test_an_image_list_or_its_folder_given_as_a_database_says_to_convert_it(tmp_path, cli):
    """`datakit inspect mnist_train` (an idx-export folder) said `HDF5 file 'images/00000.png 5' not found`."""
    folder = tmp_path / "mnist_train"
    folder.mkdir()
    write_list(folder / "list.txt", [(f"images/{i:05d}.png", i % 10) for i in range(5)])
    res = cli("datakit", "inspect", str(folder))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"datakit: error: {folder}: a folder of images with the image list list.txt (PATH LABEL lines), not a "
        f"database: make one with `datakit convert {folder} {folder / 'list.txt'} DB`"]
    res = cli("datakit", "mean", str(folder / "list.txt"), str(tmp_path / "m.binaryproto"))
    assert res.returncode == 1 and "an image list (PATH LABEL lines), not a database" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.binaryproto").exists()


def test_a_fifo_in_the_list_is_skipped_not_waited_on(tmp_path, cli):
    """A named pipe in an image list hung `convert` forever (open() waits for a writer)."""
    entries = make_images(tmp_path, 3)
    os.mkfifo(tmp_path / "img" / "pipe.png")
    lst = write_list(tmp_path / "list.txt", entries + [("pipe.png", 0)])
    res = cli("datakit", "check-list", str(lst), "--root", str(tmp_path / "img"))
    assert res.returncode == 1 and "list.txt:4: not a regular file:" in res.stderr
    res = subprocess.run([sys.executable, "-m", "cli.datakit_main", "convert", str(tmp_path / "img"), str(lst),
                          str(tmp_path / "db"), "--no-progress"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert res.returncode == 0, res.stderr
    assert "pipe.png: not a regular file" in res.stderr
    with open_reader(tmp_path / "db") as reader:
        assert len(reader) == 3


def test_an_output_that_is_a_folder_is_named_in_one_line(tmp_path, cli):
    """`datakit mean DB FOLDER` named the temporary file the rename failed on (/x/.img.cl8nuuw5.part)."""
    entries = make_images(tmp_path, 3, size=(24, 32))
    lst = write_list(tmp_path / "list.txt", entries)
    assert cli("datakit", "convert", str(tmp_path / "img"), str(lst), str(tmp_path / "db"), "--no-progress",
               "--resize-height", "24", "--resize-width", "32").returncode == 0
    (tmp_path / "out").mkdir()
    res = cli("datakit", "mean", str(tmp_path / "db"), str(tmp_path / "out"))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"datakit: error: {tmp_path / 'out'}: is a folder; name a file to write"]
