"""Log parsing for our Caffe-format logs and the real 2014 Caffe logs; plotting."""

from __future__ import annotations

import gzip
import inspect
import io
import math
import re

import pytest

from datakit.errors import FormatError
from trainer.caffelog import CaffeLog, fmt
from trainer.curves import parse_lines, parse_log, plot


def test_our_log_lines_round_trip(tmp_path):
    log = CaffeLog(tmp_path / "train.log", metrics_path=tmp_path / "m.csv", stream=io.StringIO())
    log.learning_rate(0, 0.01)
    log.train_loss(0, 2.302585)
    log.train_outputs(0, [("loss", 2.302585, 1.0)])
    log.testing(0, 0)
    log.test_outputs(0, [("accuracy", 0.1, 0.0), ("loss", 2.3, 1.0)])
    log.learning_rate(100, 0.009)
    log.train_loss(100, 0.5)
    log.testing(100, 0)
    log.test_outputs(100, [("accuracy", 0.9, 0.0), ("loss", 0.4, 1.0)])
    log.close()
    text = (tmp_path / "train.log").read_text()
    assert "] Iteration 100, loss = 0.5\n" in text
    assert "    Train net output #0: loss = 2.30259 (* 1 = 2.30259 loss)" in text
    assert "] Iteration 0, Testing net (#0)" in text
    assert "    Test net output #0: accuracy = 0.9\n" in text
    [run] = parse_log(tmp_path / "train.log")
    assert run.train["loss"] == [(0, pytest.approx(2.30259)), (100, 0.5)]
    assert run.train["lr"] == [(0, 0.01), (100, 0.009)]
    assert run.test["accuracy"] == [(0, 0.1), (100, 0.9)]
    assert run.test["loss"] == [(0, 2.3), (100, 0.4)]
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0] == "iteration,phase,name,value,seconds,run"
    assert rows[-1].startswith("100,test,loss,0.4,")


def test_log_lines_name_the_calling_file_and_line_as_glog_does():
    out = io.StringIO()
    log = CaffeLog(stream=out)
    here = inspect.currentframe().f_lineno + 1
    log.train_loss(7, 0.25)
    log.warning("careful", source="net.py:12")
    first, second = out.getvalue().splitlines()
    assert re.match(r"I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ test_curves\.py:%d\] Iteration 7, loss = 0\.25$" % here, first)  # noqa: UP031
    assert second.startswith("W") and second.endswith(" net.py:12] careful")


def test_quirks_two_space_thread_ids_bare_ints_nan_and_modern_lines():
    lines = [
        "I0416 03:42:47.478642  1098 solver.cpp:217] Iteration 20, lr = 0.01",
        "I0416 03:42:47.478642  1098 solver.cpp:74] Iteration 20, loss = 2",
        "I0416 03:42:48.0 1098 solver.cpp:74] Iteration 40 (12.3 iter/s, 1.6s/20 iters), loss = nan",
        "    @ 0x7f caffe::Solver::Solve()",
        "I0416 03:42:49.0  1098 solver.cpp:96] Iteration 40, Testing net",
        "I0416 03:42:49.0  1098 solver.cpp:123] Test score #0: 0.5",
        "I0416 03:42:49.0  1098 solver.cpp:123] Test score #1: 1.25",
    ]
    [run] = parse_lines(lines)
    assert run.train["lr"] == [(20, 0.01)]
    assert run.train["loss"][0] == (20, 2.0)
    assert math.isnan(run.train["loss"][1][1])
    assert run.test == {"accuracy": [(40, 0.5)], "loss": [(40, 1.25)]}


def test_iteration_going_back_starts_a_new_run():
    lines = [f"Iteration {i}, loss = 1" for i in (20, 40, 60)] + [f"Iteration {i}, loss = 2" for i in (20, 40)]
    runs = parse_lines(lines, "x.log")
    assert [len(r.train["loss"]) for r in runs] == [3, 2]
    assert runs[1].label == "x.log (run 2)"


def test_not_a_log_is_a_format_error(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello\n")
    with pytest.raises(FormatError, match="no Caffe training lines"):
        parse_log(p)


def test_real_2014_half0A_log(shared_data):
    [run] = parse_log(shared_data / "caffe_logs/half0A/140403_063910_half0A.o227963.gz")
    loss = run.train["loss"]
    assert loss[0] == (20, pytest.approx(6.66556)) and loss[-1][0] == 286180
    acc = run.test["accuracy"]
    assert len(acc) == 286
    assert acc[0] == (1000, pytest.approx(0.0389203)) and run.test["loss"][0] == (1000, pytest.approx(5.3778))
    assert acc[-1] == (286000, pytest.approx(0.6138))
    assert run.train["lr"][-1][1] == pytest.approx(0.0001)


def test_a_run_shows_as_its_summary_line_not_its_points(shared_data):
    # trainer.plot(...) as a notebook cell's last line shows these: one line each, not 43,000 points
    [run] = parse_log(shared_data / "caffe_logs/half0A/140403_063910_half0A.o227963.gz")
    text = repr(run)
    assert text.startswith("<Run 140403_063910_half0A.o227963.gz: iterations 20..286180; 14309 loss points")
    assert "last 0.6138 @ 286000" in text and "\n" not in text and len(text) < 300


def test_real_logs_with_restarts(shared_data):
    runs = parse_log(shared_data / "caffe_logs/netbase/catlog.oMANUAL.gz")
    assert len(runs) == 2
    assert runs[0].train["loss"][0][0] > 230000 and runs[0].train["loss"][-1][0] == 450000
    assert runs[0].test["accuracy"][-1][1] == pytest.approx(0.575179)
    assert runs[0].test["loss"][-1][1] == pytest.approx(1.81802)
    assert runs[1].train["loss"][0][0] == 20 and runs[1].train["loss"][-1][0] == 236140
    ft = parse_log(shared_data / "caffe_logs/transfer-ft0A0B_1_3/140507_104410_transfer-ft0A0B.o251884.gz")
    assert len(ft) == 2
    assert (270000, pytest.approx(0.646239)) in ft[0].test["accuracy"]
    assert ft[1].train["loss"][-1][0] == 12200
    killed = parse_log(shared_data / "caffe_logs/transfer0A0B_1_3/140415_235507_transfer0A0B.o240412.gz")
    assert killed[-1].train["loss"][-1][0] <= 115000


def test_plot_real_and_our_logs(shared_data, tmp_path, cli):
    ours = tmp_path / "ours.log"
    log = CaffeLog(ours, stream=None)
    for it in range(0, 200, 20):
        log.learning_rate(it, 0.01)
        log.train_loss(it, 2.0 / (1 + it))
    log.testing(200, 0)
    log.test_outputs(200, [("accuracy", 0.8, 0.0)])
    log.close()
    gz = tmp_path / "ours.log.gz"
    gz.write_bytes(gzip.compress(ours.read_bytes()))
    real = shared_data / "caffe_logs/half0A/140403_063910_half0A.o239566.gz"
    out = plot([gz, real], tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = cli("trainer", "plot", str(ours), "-o", str(tmp_path / "cli.png"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "cli.png").read_bytes()[:4] == b"\x89PNG"
    assert "ours.log: iterations 0..180; 10 loss points; test accuracy 1 points, last 0.8 @ 200" in res.stdout
    bad = cli("trainer", "plot", str(tmp_path / "missing.log"))
    assert bad.returncode != 0 and "missing.log" in bad.stderr


def test_fmt_is_like_iostream():
    assert fmt(0.1) == "0.1" and fmt(2.0) == "2" and fmt(1e-05) == "1e-05" and fmt(6.665561) == "6.66556"


def test_a_series_of_one_point_is_drawn(tmp_path, monkeypatch):
    """A run shorter than two display intervals has one loss and one lr point: a line of one point is invisible,
    so the chart showed it in the legend only; such a series gets a marker, longer ones stay plain lines."""
    import matplotlib.axes
    drawn: list[tuple[str, int, object]] = []
    real = matplotlib.axes.Axes.plot

    def spy(self, *args, **kw):
        drawn.append((kw.get("label"), len(args[0]), kw.get("marker")))
        return real(self, *args, **kw)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    for iterations in ((0,), (0, 20)):  # run 1: one display; run 2 (appended to the log): two
        log = CaffeLog(tmp_path / "short.log", metrics_path=tmp_path / "m.csv", stream=io.StringIO())
        log.run_header("from scratch")
        for it in iterations:
            log.learning_rate(it, 0.01)
            log.train_loss(it, 2.3 - it / 100)
        log.close()
    plot([tmp_path / "short.log"], tmp_path / "c.png")
    assert ("short.log train loss", 1, "o") in drawn and ("short.log", 1, "o") in drawn
    assert ("short.log (run 2) train loss", 2, None) in drawn and ("short.log (run 2)", 2, None) in drawn
