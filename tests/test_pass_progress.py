"""Long test passes say how far they are where no progress bar is seen (a log file, nohup, a notebook),
in lines that leave the Caffe log as every log reader reads it."""

from __future__ import annotations

import re

from tests.test_fit import _Terminal, opts, project  # noqa: F401 - `project` is a fixture
from trainer import pass_progress
from trainer.curves import parse_log
from trainer.fit import FitOptions, fit
from trainer.pass_progress import PassProgress

LINE = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ pass_progress\.py:\d+\] Test pass of net #0 at iteration (\d+): "
                  r"(\d+)/3 batches in \d+ s, about \d+ s left$")


def caffe_parse_log_rows(text: str) -> list[tuple]:
    """What Caffe's tools/extra/parse_log.py reads, by its regexes: any 'Iteration N' sets the iteration,
    then train / test output and lr lines become rows at it."""
    iteration, rows = -1, []
    for line in text.splitlines():
        m = re.search(r"Iteration (\d+)", line)
        if m:
            iteration = int(m.group(1))
        if iteration == -1:
            continue
        for kind, rx in (("lr", r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)"),
                         ("train", r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)"),
                         ("test", r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")):
            m = re.search(rx, line)
            if m:
                rows.append((kind, iteration, *m.groups()))
    return rows


def caffe_parse_log_sh_tests(text: str) -> tuple[list[str], list[str]]:
    """What Caffe's parse_log.sh reads: `grep -B 1 'Test '`, then the test iterations from its
    'Iteration ' lines and the values of its 'Test net output #0' lines (awk's 11th field)."""
    lines = text.splitlines()
    aux = [line for i, line in enumerate(lines) if "Test " in line or (i + 1 < len(lines) and "Test " in lines[i + 1])]
    iterations = [re.sub(r".*Iteration (\d*).*", r"\1", line) for line in aux if "Iteration " in line]
    values = [line.split()[10] for line in aux if "Test net output #0" in line]
    return iterations, values


def _without_stamps(text: str) -> list[str]:
    return [line.split("] ", 1)[-1] for line in text.splitlines()]


def test_a_long_test_pass_logs_progress_that_every_log_reader_skips(project, tmp_path, monkeypatch):
    plain = fit(opts(project()))
    quiet_log = (tmp_path / "snap/tiny.log").read_text()
    assert "Test pass of net" not in quiet_log  # quick passes: the log is as Caffe writes it
    monkeypatch.setattr(pass_progress, "FIRST_AFTER", 0.0)  # every pass "long": a line after each batch
    monkeypatch.setattr(pass_progress, "EVERY", 0.0)
    shown = fit(o := opts(project("long.prototxt", prefix="snap/long")))
    log = (tmp_path / "snap/long.log").read_text()
    progress = [LINE.match(line) for line in log.splitlines() if "Test pass of net" in line]
    assert all(progress) and [(m.group(1), m.group(2)) for m in progress] == [
        (it, done) for it in ("0", "20", "40") for done in ("1", "2")]  # never at the last batch
    assert [line for line in o.stream.getvalue().splitlines() if "Test pass of net" in line] == [
        m.group(0) for m in progress]  # a StringIO is no terminal: no bar, so the lines go there too
    assert shown.test_scores == plain.test_scores
    # the same log for our parser and for Caffe's parse_log.py and parse_log.sh, line for line
    [before], [after] = parse_log(tmp_path / "snap/tiny.log"), parse_log(tmp_path / "snap/long.log")
    assert (after.train, after.test, after.number, after.how) == (before.train, before.test, before.number, before.how)
    assert caffe_parse_log_rows(log) == caffe_parse_log_rows(quiet_log) != []
    assert caffe_parse_log_sh_tests(log) == caffe_parse_log_sh_tests(quiet_log)
    assert caffe_parse_log_sh_tests(log)[0] == ["0", "20", "40"]
    others = [line for line in _without_stamps(log) if "Test pass of net" not in line]
    assert len(others) == len(_without_stamps(quiet_log))  # nothing else added or taken away


def test_with_a_bar_the_lines_go_to_the_log_file_only_and_no_progress_means_none(project, tmp_path, monkeypatch):
    monkeypatch.setattr(pass_progress, "FIRST_AFTER", 0.0)
    monkeypatch.setattr(pass_progress, "EVERY", 0.0)
    term = _Terminal()
    fit(FitOptions(solver=project(), device="cpu", stream=term, handle_signals=False))
    assert "Test pass of net" not in term.getvalue()  # the terminal has its bar
    assert (tmp_path / "snap/tiny.log").read_text().count("] Test pass of net #0 at iteration ") == 6  # tail -f
    fit(opts(project("none.prototxt", prefix="snap/none"), progress=False))
    assert "Test pass of net" not in (tmp_path / "snap/none.log").read_text()


def test_lines_wait_for_a_long_pass_and_are_spaced_out():
    now = [100.0]
    heard: list[str] = []
    lines = PassProgress(100, heard.append, "Test pass of net #0 at iteration 0", clock=lambda: now[0])
    for done, at in [(1, 101), (5, 109.9), (9, 111), (20, 125), (30, 141.5), (60, 171), (99, 250), (100, 260)]:
        now[0] = at
        lines.update(done)
    assert heard == ["Test pass of net #0 at iteration 0: 9/100 batches in 11 s, about 111 s left",  # after 10 s
                     "Test pass of net #0 at iteration 0: 30/100 batches in 42 s, about 97 s left",  # 30 s later
                     "Test pass of net #0 at iteration 0: 99/100 batches in 150 s, about 2 s left"]  # not at 100


def test_trainer_test_quiet_off_a_terminal_says_how_far_it_is(project, tmp_path, monkeypatch, capsys):
    from cli.trainer_main import main

    solver = project()
    fit(opts(solver))
    monkeypatch.setattr(pass_progress, "FIRST_AFTER", 0.0)
    monkeypatch.setattr(pass_progress, "EVERY", 0.0)
    args = ["test", "--model", f"{solver}.net", "--weights", "snap/tiny_iter_40.caffemodel", "--iterations", "4",
            "--device", "cpu"]
    capsys.readouterr()
    assert main([*args, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert re.findall(r"^test: (\d)/4 batches in \d+ s, about \d+ s left$", err, re.M) == ["1", "2", "3"]
    assert main(args) == 0  # the per-batch lines on stdout are its progress
    assert main([*args, "--quiet", "--no-progress"]) == 0
    assert "batches in" not in capsys.readouterr().err
