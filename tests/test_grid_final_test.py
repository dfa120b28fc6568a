"""Every net a grid trains ends with a test, whatever --max-iter is against test_interval; a
finished net whose log has no test is named as such by `grid summary` / `grid status`, not as missing.

The tiny three-layer net and its data are test_grid_runner's (solver: test_interval 10, no
test_initialization). Caffe tests after the last iteration only when test_interval divides
max_iter, so a grid made with --max-iter 7 used to train nets that were never tested.
"""

from __future__ import annotations

import io
import json
import shlex

from datakit.parallel import InlineExecutor
from tests.test_grid_runner import DATA, project, trainer  # noqa: F401  (project is a fixture)
from trainer.grid import grid_status
from trainer.grid.make import GridPlan, make_grid
from trainer.grid.layout import STATE_FILE, fit_arguments, read_net_spec, write_json
from trainer.grid.metric import read_curve
from trainer.grid.runner import fit_command, run_grid
from trainer.grid.summary import format_table, group, summarize


def make(project, out, **kw) -> list[str]:
    """test_grid_runner's grid, over its solver with test_initialization false (as in the report)."""
    solver = out.parent / "solver_no_init_test.prototxt"
    solver.write_text((project / "solver.prototxt").read_text() + "test_initialization: false\n")
    return make_grid(out, GridPlan(net=str(project / "net.prototxt"), solver=str(solver), data=str(project / DATA), **kw))


def test_a_grid_shorter_than_test_interval_still_scores_every_net(project, tmp_path):  # noqa: F811
    grid = tmp_path / "g"
    names = make(project, grid, layers=[1], pairs=["AA"], families=["BnB"], max_iter=7)
    assert names == ["half0A", "transfer0A0A_1_1"]
    result = run_grid(grid, executor=InlineExecutor(), stream=io.StringIO())
    assert result.count("done") == 2
    for name in names:
        curve = read_curve(grid / name)
        assert list(curve.tests) == [7], name      # the one test: after the last iteration
    rows = summarize(grid)
    assert all(r.status == "partial" and r.score is not None for r in rows)
    assert all(r.score is not None for r in grid_status(grid))
    script = shlex.split((grid / "half0A/command.sh").read_text().splitlines()[-1])  # by hand: the same
    assert script[:2] == ["trainer", "fit"] and script[-2:] == ["--max-iter", "7"]


def test_fit_command_adds_max_iter_to_a_grid_made_before_it_was_written(project, tmp_path):  # noqa: F811
    grid = tmp_path / "g"
    make(project, grid, layers=[1], pairs=["AA"], families=["BnB"], max_iter=7)
    spec = read_net_spec(grid / "half0A")
    assert "--max-iter" not in spec.command            # net.json keeps the plain command
    assert fit_arguments(spec)[-2:] == ["--max-iter", "7"]
    assert fit_command(spec, None)[-3:] == ["--max-iter", "7", "--quiet"]
    spec.command += ["--max-iter", "5"]                  # an explicit one is left alone
    assert fit_arguments(spec).count("--max-iter") == 1 and fit_arguments(spec)[-1] == "5"


def _trained_by_the_old_command(net) -> None:
    """Train the net as grid run did before it passed --max-iter (net.json's command as it is)."""
    spec = read_net_spec(net)
    ran = trainer(*spec.command[1:], "--quiet", cwd=net)
    assert ran.returncode == 0, ran.stderr
    write_json(net / STATE_FILE, {"state": "done", "exit_code": 0})


def test_summary_names_a_finished_net_without_a_test_apart_from_missing_ones(project, tmp_path):  # noqa: F811
    grid = tmp_path / "g"
    make(project, grid, layers=[1], pairs=["AA"], families=["BnB"], max_iter=7)
    _trained_by_the_old_command(grid / "half0A")
    rows = {r.net: r for r in summarize(grid)}
    untested, missing = rows["half0A"], rows["transfer0A0A_1_1"]
    assert (untested.status, untested.score, untested.logs) == ("untested", None, 1)
    assert untested.note.startswith("finished, but its log has no test accuracy: test_interval 10 does not "
                                    "divide max_iter 7")
    assert (missing.status, missing.note) == ("missing", "")
    table = format_table(list(rows.values()), group(list(rows.values())))
    assert "untested (a log, but no test accuracy in it): 1:" in table
    assert "  half0A: finished, but its log has no test accuracy: test_interval 10" in table
    assert "missing (no log with a test): 1: transfer0A0A_1_1" in table
    [status] = [r for r in grid_status(grid) if r.net == "half0A"]
    assert status.state == "done" and "test_interval 10 does not divide max_iter 7" in status.reason
    done = trainer("grid", "summary", str(grid), "--jobs", "1", "--json", str(tmp_path / "s.json"))
    assert done.returncode == 0, done.stderr
    assert "half0A: finished, but its log has no test accuracy" in done.stdout
    doc = json.loads((tmp_path / "s.json").read_text())
    assert {r["net"]: r["status"] for r in doc["nets"]} == {"half0A": "untested", "transfer0A0A_1_1": "missing"}
    # The note's command tests the final weights without training again; then the net has its score.
    hint = untested.note.split("test its final weights in half0A/ with: ", 1)[1]
    assert hint == ("trainer fit --solver solver.prototxt --log train.log --max-iter 7 "
                    "--snapshot snapshots/net_iter_7.solverstate")
    retest = trainer(*shlex.split(hint)[1:], "--quiet", cwd=grid / "half0A")
    assert retest.returncode == 0, retest.stderr
    [row] = [r for r in summarize(grid) if r.net == "half0A"]
    assert (row.status, row.tests, row.last_iteration) == ("partial", 1, 7) and row.score is not None


def test_an_unfinished_net_without_a_test_yet_says_so(project, tmp_path):  # noqa: F811
    grid = tmp_path / "g"
    make(project, grid, layers=[1], pairs=["AA"], families=["BnB"], max_iter=7)
    (grid / "half0A/train.log").write_text("I1201 10:00:01.000000 1 solver.py:230] Iteration 3, loss = 1.0\n")
    [row] = [r for r in summarize(grid) if r.net == "half0A"]
    assert (row.status, row.note) == ("untested", "not finished, no test yet (last iteration 3 of 7)")


def test_make_warns_when_the_solver_has_no_test_net(project, tmp_path):  # noqa: F811
    solver = tmp_path / "solver.prototxt"
    solver.write_text((project / "solver.prototxt").read_text().replace("test_iter: 2 test_interval: 10 ", ""))
    done = trainer("grid", "make", str(tmp_path / "g"), "--net", str(project / "net.prototxt"), "--solver", str(solver),
                   "--data", str(project / "data/{split}{half}_{phase}_lmdb"), "--pairs", "AA", "--layers", "1")
    assert done.returncode == 0, done.stderr
    assert f"warning: {solver} has no test_iter" in done.stderr
    quiet = trainer("grid", "make", str(tmp_path / "h"), "--net", str(project / "net.prototxt"), "--solver",
                    str(project / "solver.prototxt"), "--data", str(project / "data/{split}{half}_{phase}_lmdb"),
                    "--pairs", "AA", "--layers", "1")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr
