"""TensorBoard scalars: `trainer fit --tensorboard` and `trainer plot --tensorboard`, read back with
TensorBoard's own event reader (no TensorFlow)."""

from __future__ import annotations

import csv
import math

import pytest

from tests.test_fit import opts, project  # noqa: F401  (fixture)
from trainer.curves import parse_log

pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e '.[test]' installs it)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from trainer.fit import fit  # noqa: E402
from trainer.tensorboard import tag_for  # noqa: E402


def read_board(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})   # 0: keep every value
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-12)


def test_fit_writes_every_logged_number(project, tmp_path):  # noqa: F811
    result = fit(opts(project(), tensorboard=str(tmp_path / "board")))
    board = read_board(tmp_path / "board")
    # every row of the metrics CSV is a scalar, same step and value (float32 in the event file)
    with open(tmp_path / "snap/tiny.metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows
    # the CSV's train rows hold the smoothed loss, then each train net output ("output NAME" there,
    # train_output/NAME on the board)
    want: dict[str, list] = {}
    for r in rows:
        tag = f"{r['phase']}/{r['name']}"
        step = int(r["iteration"])
        if r["phase"] == "train" and r["name"].startswith("output "):
            tag = "train_output/" + r["name"].removeprefix("output ")
        want.setdefault(tag, []).append((step, float(r["value"])))
    assert set(board) == set(want)
    assert {"train/loss", "train/lr", "train_output/loss", "test/accuracy", "test/loss"} <= set(board)
    for tag, points in want.items():
        got = board[tag]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        assert all(same(v, w) for (_, v), (_, w) in zip(got, points)), tag
    assert [s for s, _ in board["test/accuracy"]] == [0, 20, 40]
    assert board["test/accuracy"][-1][1] == pytest.approx(result.test_scores[0]["accuracy"], rel=1e-6)


def test_cli_fit_tensorboard(project, tmp_path, cli):  # noqa: F811
    name = project(max_iter=10, test_interval=10)
    r = cli("trainer", "fit", "--solver", name, "--device", "cpu", "--quiet", "--tensorboard", "tb", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    board = read_board(tmp_path / "tb")
    assert [s for s, _ in board["train/loss"]] == [0, 5, 10]
    assert [s for s, _ in board["test/accuracy"]] == [0, 10]


def real_logs(shared_data):
    logs = sorted((shared_data / "caffe_logs").glob("*/*.gz"))
    if not logs:
        pytest.skip("no Caffe logs in shared data")
    return logs


def test_plot_converts_real_2014_caffe_logs(shared_data, tmp_path, cli):
    logs = real_logs(shared_data)[:3]
    r = cli("trainer", "plot", *map(str, logs), "--tensorboard", str(tmp_path / "tb"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "curves.png").exists()   # only the board was asked for
    for log in logs:
        runs = parse_log(log)
        for run in runs:
            folder = tmp_path / "tb" / (log.name[:-3] + (f"-run{run.index + 1}" if run.index else ""))
            board = read_board(folder)
            n_values = 0
            for kind, series in (("train", run.train), ("test", run.test)):
                for name, points in series.items():
                    got = board[tag_for(kind, name)]
                    assert [s for s, _ in got] == [it for it, _ in points]
                    assert all(same(v, w) for (_, v), (_, w) in zip(got, points))
                    n_values += len(points)
            assert n_values > 0
    first = read_board(tmp_path / "tb" / logs[0].name[:-3])
    assert "train/loss" in first and ("test/accuracy" in first or "test/loss" in first)


def test_tag_scheme_matches_fit_and_logs():
    assert tag_for("train", "loss") == "train/loss"
    assert tag_for("train", "output loss") == "train_output/loss"
    assert tag_for("test", "accuracy") == "test/accuracy"
    assert tag_for("test", "accuracy (net #1)") == "test1/accuracy"


def test_plotting_a_growing_log_again_replaces_its_run(tmp_path, cli):
    """`trainer plot LOG --tensorboard DIR` run again as the log grows: one copy of each point
    (a second event file of the whole log made TensorBoard draw, and smooth, every point twice)."""
    from tests.board_fixtures import loss_points, start_run, write_iterations
    log = start_run(tmp_path, "lenet.log", iterations=100)
    for more in (False, True):
        if more:
            write_iterations(log, 100, 200)
        r = cli("trainer", "plot", str(tmp_path / "lenet.log"), "--tensorboard", str(tmp_path / "tb"))
        assert r.returncode == 0, r.stderr
        board = read_board(tmp_path / "tb" / "lenet")
        steps = [s for s, _ in board["train/loss"]]
        assert steps == sorted(set(steps)) and len(steps) == loss_points(200 if more else 100)
        assert len(list((tmp_path / "tb" / "lenet").glob("*tfevents*"))) == 1
    log.close()


def test_plot_leaves_a_run_that_fit_writes_alone(tmp_path):
    """The README's example: `trainer fit --tensorboard runs/finetune`, then `trainer plot old.log
    finetune.log --tensorboard runs/`: the live run is not doubled; the other log is converted."""
    from tests.board_fixtures import start_run
    from trainer.tensorboard import ScalarWriter, log_to_tensorboard
    with ScalarWriter(tmp_path / "runs" / "finetune") as live:       # what fit --tensorboard writes
        live.scalar("train/loss", 2.0, 0)
    start_run(tmp_path, "finetune.log").close()
    start_run(tmp_path, "old.log").close()
    warned: list[str] = []
    written = log_to_tensorboard([tmp_path / "finetune.log", tmp_path / "old.log"], tmp_path / "runs",
                                 warn=warned.append)
    assert [folder.name for folder, _ in written] == ["old"]
    assert read_board(tmp_path / "runs" / "finetune") == {"train/loss": [(0, 2.0)]}
    assert len(warned) == 1 and "runs/finetune: holds TensorBoard events that trainer plot did not write" in warned[0]
    assert "finetune.log was not added" in warned[0]


def test_a_run_resumed_from_an_earlier_snapshot_is_on_the_board_once(project, tmp_path):  # noqa: F811
    """A run killed after its snapshot at 20 got to 40; resumed from that snapshot it logs 20..40
    again: the board holds each iteration once, and the same numbers as one uninterrupted run."""
    fit(opts(project("whole.prototxt", snapshot=20, prefix="snap/whole"), tensorboard=str(tmp_path / "whole")))
    name = project("resumed.prototxt", snapshot=20, prefix="snap/resumed")
    fit(opts(name, tensorboard=str(tmp_path / "resumed")))
    before = read_board(tmp_path / "resumed")
    fit(opts(name, tensorboard=str(tmp_path / "resumed"), snapshot="snap/resumed_iter_20.solverstate"))
    board = read_board(tmp_path / "resumed")
    assert set(board) == set(before)
    for tag, points in board.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), tag
    whole = read_board(tmp_path / "whole")
    assert {t: [s for s, _ in p] for t, p in board.items()} == {t: [s for s, _ in p] for t, p in whole.items()}
    assert all(same(v, w) for t in board for (_, v), (_, w) in zip(board[t], whole[t]))
