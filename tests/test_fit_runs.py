"""`trainer fit` run after run in one folder: no silent restart, one header per run, runs kept apart."""

from __future__ import annotations

import csv
import io

import pytest

from datakit.errors import ConfigError
from tests.test_fit import project  # noqa: F401  (fixture: a tiny LMDB project in tmp_path)
from trainer.curves import parse_log, summary
from trainer.fit import FitOptions, fit


def opts(solver, **kw):
    return FitOptions(solver=solver, device="cpu", stream=io.StringIO(), handle_signals=False, **kw)


def test_a_second_run_stops_and_names_the_latest_solverstate(project, tmp_path, cli):  # noqa: F811
    name = project("s.prototxt", max_iter=10, snapshot=5, test_interval=0, prefix="out/run")
    fit(opts(name))
    log_before = (tmp_path / "out/run.log").read_text()
    with pytest.raises(ConfigError) as err:
        fit(opts(name))
    assert str(err.value) == ("out/run: an earlier run left snapshots here (the latest is out/run_iter_10.solverstate, "
                              "iteration 10); resume it with --snapshot out/run_iter_10.solverstate, or start over "
                              "with --restart (its snapshots are then overwritten as the new run reaches them)")
    assert (tmp_path / "out/run.log").read_text() == log_before  # nothing written by the refused run
    with pytest.raises(ConfigError, match="--restart"):
        fit(opts(name, weights="out/run_iter_5.caffemodel"))   # fine-tuning over them is starting over too
    res = cli("trainer", "fit", "--solver", name, "--device", "cpu", "--quiet", cwd=tmp_path)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "--snapshot out/run_iter_10.solverstate" in res.stderr and "--restart" in res.stderr
    res = cli("trainer", "fit", "--solver", name, "--device", "cpu", "--quiet", "--restart", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    headers = [line for line in (tmp_path / "out/run.log").read_text().splitlines() if "] trainer fit run " in line]
    assert [h.split("] ", 1)[1] for h in headers] == [
        "trainer fit run 1: from scratch",
        "trainer fit run 2: from scratch (--restart over 2 earlier snapshot(s) of out/run, latest "
        "out/run_iter_10.solverstate: overwritten as this run reaches their iterations)"]


def test_an_incomplete_snapshot_alone_also_stops_a_silent_restart(project, tmp_path):  # noqa: F811
    name = project("i.prototxt", max_iter=4, test_interval=0, prefix="inc/run")
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc/run_iter_3.caffemodel").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"inc/run: an earlier run left inc/run_iter_3\.caffemodel \(an incomplete "
                                          r"snapshot, no \.solverstate beside it to resume from\); start over with --restart"):
        fit(opts(name))


def test_plot_never_glues_a_resumed_run_onto_a_restarted_one(project, tmp_path):  # noqa: F811
    """run 1: 0..20 (snapshots 10, 20); run 2 --restart, 5 iterations; run 3 resumes run 1 from 10."""
    name = project("g.prototxt", max_iter=20, snapshot=10, test_interval=10, prefix="g/run")
    fit(opts(name))
    fit(opts(name, restart=True, max_iter=5))
    fit(opts(name, snapshot="g/run_iter_10.solverstate"))
    runs = parse_log(tmp_path / "g/run.log")
    assert [(r.name, r.continues) for r in runs] == [(1, None), (2, None), (3, 1)]
    assert runs[2].how == "resuming from g/run_iter_10.solverstate"
    assert max(it for it, _ in runs[1].train["loss"]) <= 5
    assert min(it for it, _ in runs[2].train["loss"]) >= 10
    assert "run.log (run 3) resumes run 1: iterations 10..20" in summary(runs)
    # Without the headers, run 3 (iterations 10..20) would have been glued onto run 2 (0..5):
    plain = [line for line in (tmp_path / "g/run.log").read_text().splitlines() if "trainer fit run" not in line]
    from trainer.curves import parse_lines
    assert len(parse_lines(plain)) == 2

    with open(tmp_path / "g/run.metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["run"] for r in rows} == {"1", "2", "3"}
    keys = [(r["run"], r["iteration"], r["phase"], r["name"]) for r in rows]
    assert len(keys) == len(set(keys)), "one row per event"
    assert ("1", "5", "train", "loss") in keys and ("1", "5", "train", "output loss") in keys
    assert [k for k in keys if k[0] == "3" and k[2] == "test"][0][1] == "10"


def test_the_closing_summary_names_the_iteration_of_its_test(project, tmp_path, cli):  # noqa: F811
    name = project("c.prototxt", max_iter=30, test_interval=20, prefix="c/run")
    res = cli("trainer", "fit", "--solver", name, "--device", "cpu", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "trained to iteration 30; weights c/run_iter_30.caffemodel; test net #0 at iteration 20: loss = " \
           in res.stdout


def test_an_old_metrics_csv_is_kept_aside_and_runs_are_numbered_from_the_log(tmp_path):
    from trainer.caffelog import CaffeLog
    (tmp_path / "m.csv").write_text("iteration,phase,name,value,seconds\n0,train,loss,1.0,0.1\n")
    (tmp_path / "x.log").write_text("I1201 10:00:00.000000 12345 fit.py:1] trainer fit run 4: from scratch\n")
    log = CaffeLog(tmp_path / "x.log", metrics_path=tmp_path / "m.csv", stream=None)
    log.run_header("from scratch")
    log.train_loss(0, 0.5)
    log.close()
    assert log.run == 5 and log.renamed_metrics == tmp_path / "m.csv.old"
    assert (tmp_path / "m.csv.old").read_text().startswith("iteration,phase,name,value,seconds\n0,train")
    assert (tmp_path / "m.csv").read_text().splitlines()[1].startswith("0,train,loss,0.5,")
    assert (tmp_path / "m.csv").read_text().splitlines()[1].endswith(",5")
    plain = CaffeLog(stream=io.StringIO(), prefix=False, run=2)   # no glog prefix: the header still counts
    plain.run_header("from scratch")
    from trainer.curves import parse_lines
    runs = parse_lines([plain.stream.getvalue(), "Iteration 0, loss = 1\n"])
    assert [r.number for r in runs] == [2]


def test_a_run_that_fails_while_its_nets_are_built_says_why_in_its_log(project, tmp_path):  # noqa: F811
    """A missing --weights file (or mean file, or CuPy) after the log opened left a log with no error in it,
    and `trainer board` showed the run as running; the failure is now the log's last line, as in training."""
    from pathlib import Path

    from trainer.board.runs import read_run, run_row
    name = project("w.prototxt", max_iter=4, test_interval=0, prefix="wf/run")
    # (a missing --weights file now stops before the log opens; a mean file missing stops once it has)
    net = tmp_path / "w.prototxt.net"
    net.write_text(net.read_text().replace("mean_value: 128", 'mean_file: "nope.binaryproto"', 1))
    with pytest.raises(Exception, match="nope.binaryproto: file not found"):
        fit(opts(name))
    lines = (tmp_path / "wf/run.log").read_text().splitlines()
    assert lines[-1].startswith("E") and "layer data (Data): nope.binaryproto: file not found" in lines[-1]
    row = run_row(read_run(Path(tmp_path / "wf/run.log"), "run"))
    assert row["state"] == "failed" and "nope.binaryproto: file not found" in row["note"]


def test_the_speed_line_starts_after_the_first_iteration(project, tmp_path):  # noqa: F811
    """The first iteration compiles and allocates: timed with it, the demo said 'Iteration 0, 0.20 iter/s,
    0:16:57 left' for a 12 s run. The speed and time left are shown from the next displayed iteration on."""
    name = project("e.prototxt", max_iter=12, test_interval=0, prefix="eta/run")
    fit(opts(name))
    speed_lines = [line.split("] ", 1)[1] for line in (tmp_path / "eta/run.log").read_text().splitlines()
                   if " iter/s, " in line]
    assert [s.split(",")[0] for s in speed_lines] == ["Iteration 5", "Iteration 10"], speed_lines


def test_a_second_run_into_the_same_snapshot_prefix_is_refused_while_the_first_runs(project, tmp_path):  # noqa: F811
    """Two `trainer fit` of one solver at once interleaved one log and overwrote each other's snapshots."""
    import os

    from datakit.errors import DatabaseError
    from datakit.outputlock import OutputLock
    name = project("l.prototxt", max_iter=4, test_interval=0, prefix="lk/run")
    held = OutputLock("lk/run")  # as the first run holds it
    held.acquire()
    try:
        with pytest.raises(DatabaseError) as err:
            fit(opts(name))
    finally:
        held.release()
    assert str(err.value) == (f"lk/run: another trainer fit (process {os.getpid()}) is writing this snapshot "
                              "prefix (its snapshots and log); wait for it to finish, or give this run another "
                              "snapshot_prefix")
    assert not (tmp_path / "lk/run.log").exists()
    fit(opts(name))  # free again: the run goes ahead
    assert (tmp_path / "lk/run_iter_4.caffemodel").is_file() and not (tmp_path / "lk/.run.lock").exists()
