"""`trainer grid summary` and `trainer plot --transfer` on the authors' own logs, quirks included."""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
import zlib
from pathlib import Path

import pytest

from trainer.grid.metric import read_curve
from trainer.grid.names import classify
from trainer.grid.summary import group, summarize

SCORE = re.compile(r"Test score #0: (\S+)")
TESTING = re.compile(r"Iteration (\d+), Testing net")


def naive_tests(folder: Path) -> dict[int, float]:
    """An independent reading: logs in job-number order, line by line, a later test line overwrites."""
    logs = sorted(folder.glob("*.o*"), key=lambda p: int(re.search(r"\.o(\d+)", p.name).group(1)))
    texts = []
    for log in logs:
        with gzip.open(log, "rt", errors="replace") as f:
            texts.append(f.readlines())
    return naive_tests_of(texts)


def top10(tests: dict[int, float]) -> float:
    best = sorted(tests.values())[-10:]
    return sum(best) / len(best)


def test_names_say_family_n_split_and_half():
    assert classify("half2B") == classify("half2B") and classify("half2B").family == "base"
    k = classify("transfer-ft1A1B_1_6")
    assert (k.family, k.n, k.split, k.half, k.source_half) == ("AnB+", 6, "1", "B", "A")
    assert classify("transfer0B0B_1_2").family == "BnB"
    assert (classify("transfernatmanBA_1_3").family, classify("transfernatmanBA_1_3").half) == ("natman-AnB", "A")
    assert (classify("nolearn_1_4").family, classify("nolearn_1_4").n) == ("random-frozen", 4)
    assert (classify("reduced-0025").family, classify("reduced-0025").per_class) == ("reduced", 25)
    assert classify("netbase").family == "whole" and classify("my-net").family == "other"


def test_the_four_caffe_logs_nets_with_every_quirk(shared_data):
    logs = shared_data / "caffe_logs"
    rows = {r.net: r for r in summarize(logs)}
    assert {n: r.family for n, r in rows.items()} == {
        "half0A": "base", "netbase": "whole", "transfer0A0B_1_3": "AnB", "transfer-ft0A0B_1_3": "AnB+"}
    for name in ("half0A", "transfer0A0B_1_3", "transfer-ft0A0B_1_3"):
        curve = read_curve(logs / name)
        assert curve.tests == naive_tests(logs / name), name
        assert rows[name].score == pytest.approx(top10(curve.tests), rel=1e-12)
    # half0A: the resumed job overlaps the first from 280,000; the final test is the second job's.
    half = read_curve(logs / "half0A")
    assert len(half.tests) == 450 and half.tests[450000] == 0.614559 and half.last_iteration == 450000
    # transfer0A0B_1_3: the first job was killed right after "Iteration 115000, Testing net".
    frozen = read_curve(logs / "transfer0A0B_1_3")
    assert 115000 in frozen.tests and frozen.tests[450000] == 0.626239 and len(frozen.tests) == 450
    # transfer-ft0A0B_1_3: a second job restarts at iteration 20 inside the first file (two runs).
    tuned = read_curve(logs / "transfer-ft0A0B_1_3")
    assert tuned.runs == 3 and tuned.tests[425000] == 0.646999 and tuned.last_iteration == 425820
    # netbase: the resumed run (11 March) comes first in the file, the older runs (6 March) after it;
    # by time stamp the resumed run is the later one and wins where they overlap (230,000..236,000).
    base = read_curve(logs / "netbase")
    text = gzip.open(logs / "netbase" / "catlog.oMANUAL.gz", "rt").read()
    first_run = text[:text.index("Optimization Done.")]
    at_231k = re.search(r"Iteration 231000, Testing net.*?\n.*?Test score #0: (\S+)", first_run).group(1)
    assert base.tests[231000] == float(at_231k) and base.tests[450000] == 0.575179
    assert rows["netbase"].score == pytest.approx(top10(base.tests), rel=1e-12)


@pytest.fixture
def families(shared_data, tmp_path):
    """Whole families from results/: base nets of split 0, AnB+ 0A->0B (all logged) and 0B->0A (none)."""
    results = shared_data / "convnet_transfer" / "results"
    root = tmp_path / "study"
    root.mkdir()
    names = ["half0A", "half0B"] + [f"transfer-ft0{a}0{b}_1_{n}" for a, b in ("AB", "BA") for n in range(1, 8)]
    for name in names:
        (root / name).symlink_to(results / name)
    (root / "unfinished").mkdir()
    return results, root


def test_whole_families_of_the_authors_results(families):
    results, root = families
    rows = summarize(root)
    by_name = {r.net: r for r in rows}
    for n in range(1, 8):
        name = f"transfer-ft0A0B_1_{n}"
        assert by_name[name].score == pytest.approx(top10(naive_tests(results / name)), rel=1e-12), name
        missing = by_name[f"transfer-ft0B0A_1_{n}"]
        assert (missing.status, missing.score, missing.logs) == ("missing", None, 0)
    assert by_name["unfinished"].status == "missing"
    empty = read_curve(root / "half0A")  # two of its four logs are empty gzip files (49 bytes)
    assert (empty.logs, empty.empty_logs, by_name["half0A"].logs) == (4, 2, 4)
    means = {(g.family, g.n): g for g in group(rows)}
    assert (means["base", 0].nets, means["base", 0].scored) == (2, 2)
    assert all((means["AnB+", n].nets, means["AnB+", n].scored) == (2, 1) for n in range(1, 8))
    # The paper's finding, in the authors' numbers: fine-tuned AnB+ beats the base nets at every n.
    assert all(means["AnB+", n].mean_score > means["base", 0].mean_score for n in range(1, 8))


def test_cli_summary_csv_json_and_the_transfer_figure(cli, families, tmp_path):
    _, root = families
    done = cli("trainer", "grid", "summary", str(root), "--csv", str(tmp_path / "s.csv"),
               "--json", str(tmp_path / "s.json"), "--jobs", "2")
    assert done.returncode == 0, done.stderr
    assert "missing (no log with a test): 8:" in done.stdout and "unfinished" in done.stdout
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert {"net", "family", "n", "score"} <= set(rows[0]) and len(rows) == 17
    doc = json.loads((tmp_path / "s.json").read_text())
    assert len(doc["nets"]) == 17 and any(g["family"] == "AnB+" for g in doc["groups"])
    for source in (str(root), str(tmp_path / "s.json")):
        out = tmp_path / "fig.png"
        drawn = cli("trainer", "plot", "--transfer", source, "-o", str(out))
        assert drawn.returncode == 0, drawn.stderr
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        out.unlink()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_cli_summary_shows_a_bar_over_the_nets_when_asked(cli, families, tmp_path, jobs):
    """The authors' 170 nets took 43 s with nothing on the screen; the bar goes to stderr, the table stays clean."""
    _, root = families
    shown = cli("trainer", "grid", "summary", str(root), "--jobs", jobs, "--progress")
    quiet = cli("trainer", "grid", "summary", str(root), "--jobs", jobs, "--no-progress")
    assert shown.returncode == quiet.returncode == 0, shown.stderr + quiet.stderr
    assert "reading logs" in shown.stderr and "/17 " in shown.stderr and quiet.stderr == ""
    assert shown.stdout == quiet.stdout


def test_our_own_logs_are_scored_too(tmp_path):
    net = tmp_path / "grid" / "half0A"
    net.mkdir(parents=True)
    lines = []
    for i, acc in enumerate([0.1, 0.5, 0.4, 0.7]):
        it = i * 100
        lines += [f"I1201 10:00:{i:02d}.000000 12345 solver.py:200] Iteration {it}, Testing net (#0)",
                  f"I1201 10:00:{i:02d}.100000 12345 solver.py:220]     Test net output #0: accuracy = {acc}",
                  f"I1201 10:00:{i:02d}.100000 12345 solver.py:220]     Test net output #1: loss = 1.5",
                  f"I1201 10:00:{i:02d}.200000 12345 solver.py:230] Iteration {it + 10}, loss = 0.3"]
    (net / "train.log").write_text("\n".join(lines) + "\n")
    [row] = summarize(tmp_path / "grid")
    assert (row.family, row.tests, row.status) == ("base", 4, "partial")
    assert row.score == pytest.approx((0.1 + 0.5 + 0.4 + 0.7) / 4) and row.best_accuracy == 0.7


def test_top_k_is_an_option(shared_data):
    logs = shared_data / "caffe_logs"
    [row] = [r for r in summarize(logs, top=3) if r.net == "half0A"]
    best3 = sorted(read_curve(logs / "half0A").tests.values())[-3:]
    assert row.score == pytest.approx(sum(best3) / 3, rel=1e-12)


def write_log(folder: Path, accuracies: list[float]) -> None:
    """A `trainer fit` log with one test (loss, accuracy) every 10 iterations."""
    folder.mkdir(parents=True)
    lines = []
    for i, acc in enumerate(accuracies):
        lines += [f"I1201 10:00:{i:02d}.000000  1 solver.py:222] Iteration {10 * i}, Testing net (#0)",
                  f"I1201 10:00:{i:02d}.100000  1 solver.py:252]     Test net output #0: loss = {2 - acc}",
                  f"I1201 10:00:{i:02d}.200000  1 solver.py:252]     Test net output #1: accuracy = {acc}"]
    (folder / "train.log").write_text("\n".join(lines) + "\n")


def test_a_metric_no_log_has_is_one_line_not_a_table_of_untested_nets(tmp_path, cli):
    from datakit.errors import ConfigError

    write_log(tmp_path / "grid/half0A", [0.5, 0.7, 0.6])
    write_log(tmp_path / "grid/half0B", [0.4, 0.8])
    assert [r.score for r in summarize(tmp_path / "grid", top=2)] == [pytest.approx(0.65), pytest.approx(0.6)]
    with pytest.raises(ConfigError, match=r"--metric 'acuracy': no net's log has this test output; they have "
                                          r"accuracy, loss"):
        summarize(tmp_path / "grid", metric="acuracy")
    # A loss's highest values are its worst: the paper's metric of a loss would be the wrong number.
    with pytest.raises(ConfigError, match=r"--metric 'loss': a score is the mean of the highest test values"):
        summarize(tmp_path / "grid", metric="loss")
    done = cli("trainer", "grid", "summary", str(tmp_path / "grid"), "--metric", "acuracy", "--no-progress")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("trainer: error: --metric 'acuracy': no net's log") and done.stderr.count("\n") == 1


def test_a_net_without_the_metric_beside_nets_with_it_says_which_outputs_it_has(tmp_path):
    write_log(tmp_path / "grid/half0A", [0.5])
    (tmp_path / "grid/half0B").mkdir()
    (tmp_path / "grid/half0B/train.log").write_text(
        "I1201 10:00:00.000000  1 solver.py:222] Iteration 0, Testing net (#0)\n"
        "I1201 10:00:00.100000  1 solver.py:252]     Test net output #0: top1 = 0.3\n")
    rows = {r.net: r for r in summarize(tmp_path / "grid")}
    assert rows["half0A"].status == "partial"
    assert (rows["half0B"].status, rows["half0B"].note) == (
        "untested", "its logs have no test output 'accuracy' (they have top1)")


def test_plot_transfer_names_a_missing_summary_file_as_missing(tmp_path, cli):
    done = cli("trainer", "plot", "--transfer", str(tmp_path / "scors.json"), "-o", str(tmp_path / "f.png"))
    assert done.returncode == 1 and done.stderr.startswith(f"trainer: error: {tmp_path / 'scors.json'}: no such file")


def _whole_lines_before_the_cut(cut: bytes) -> list[str]:
    """What `gzip -dc` recovers from a cut gzip file, read by zlib alone, without its broken last line."""
    text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut).decode("utf-8", "replace")
    return text[:text.rindex("\n") + 1].splitlines(keepends=True)


def naive_tests_of(texts: list[list[str]]) -> dict[int, float]:
    """naive_tests over lines already read, the logs in the order given."""
    tests: dict[int, float] = {}
    for lines in texts:
        at = None
        for line in lines:
            m = TESTING.search(line)
            if m:
                at = int(m.group(1))
                continue
            m = SCORE.search(line)
            if m and at is not None:
                tests[at] = float(m.group(1))
                at = None
    return tests


def test_a_truncated_gzip_log_is_scored_on_its_lines_before_the_cut_and_named(shared_data, tmp_path, cli):
    """A cut .gz log (a partial copy, a job killed while compressing) stopped the whole summary with one
    line; the table must come out, that net scored on the lines before the cut, the file named."""
    results = shared_data / "convnet_transfer" / "results"
    study = tmp_path / "study"
    for name in ("half0A", "half0B"):
        shutil.copytree(results / name, study / name)
    first, second = sorted((study / "half0A").glob("*.o2[23]*.gz"))  # the job, then its resumed job
    cut = second.read_bytes()[: second.stat().st_size * 3 // 5]
    second.chmod(0o644)
    second.write_bytes(cut)
    kept = _whole_lines_before_the_cut(cut)
    assert len(kept) > 1000 and not gzip.open(results / "half0A" / second.name, "rt").read().endswith(kept[-1])
    want = naive_tests_of([gzip.open(first, "rt", errors="replace").readlines(), kept])
    assert len(want) < len(naive_tests(results / "half0A"))  # the cut costs tests

    done = cli("trainer", "grid", "summary", str(study), "--no-progress", "--jobs", "2",
               "--csv", str(tmp_path / "s.csv"), "--markdown")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"warning: {second}: the gzip file is truncated (a partial copy, or a job killed while compressing it); "
        "its lines before the cut were used (`gzip -dc` recovers them)"]
    assert "| base | 0 |" in done.stdout and "2 / 2 |" in done.stdout
    rows = {row["net"]: row for row in csv.DictReader((tmp_path / "s.csv").open())}
    assert rows["half0A"]["note"] == f"truncated log {second.name}: scored on the lines before the cut"
    assert rows["half0B"]["note"] == ""
    assert float(rows["half0A"]["score"]) == pytest.approx(top10(want), rel=1e-12)
    assert read_curve(study / "half0A").tests == want
    assert read_curve(study / "half0A").truncated == [str(second)]

    # `trainer plot` names one log the user chose: still one line naming it, nothing drawn from half a file
    plotted = cli("trainer", "plot", str(second), "-o", str(tmp_path / "c.png"))
    assert plotted.returncode == 1 and "Traceback" not in plotted.stderr
    assert plotted.stderr.startswith(f"trainer: error: {second}: cannot read log: the gzip file is truncated")
    assert not (tmp_path / "c.png").exists()


def test_a_log_cut_before_its_first_line_is_flagged_and_an_empty_gzip_is_skipped(tmp_path):
    write_log(tmp_path / "grid/half0A", [0.5, 0.6, 0.7])
    whole = gzip.compress((tmp_path / "grid/half0A/train.log").read_bytes())
    (tmp_path / "grid/half0A/train.log").unlink()
    (tmp_path / "grid/half0A/run.o7.gz").write_bytes(whole[:12])  # the header only: no line at all
    heard: list[str] = []
    row = summarize(tmp_path / "grid", warn=heard.append)[0]
    assert (row.status, row.note) == ("missing", "truncated log run.o7.gz: scored on the lines before the cut")
    assert heard == [f"warning: {tmp_path / 'grid/half0A/run.o7.gz'}: the gzip file is truncated (a partial copy, "
                     "or a job killed while compressing it); its lines before the cut were used (`gzip -dc` "
                     "recovers them)"]
    (tmp_path / "grid/half0A/run.o7.gz").write_bytes(gzip.compress(b""))  # the authors' empty logs: skipped
    heard.clear()
    assert (summarize(tmp_path / "grid", warn=heard.append)[0].status, heard) == ("missing", [])


def test_a_corrupt_gzip_log_is_one_line_naming_it_not_a_traceback(tmp_path, cli):
    """Damage inside a .gz (not a cut) raised zlib.error, which no one caught; unlike a cut, the lines
    gzip gives before it are not to be trusted, so it stays an error."""
    write_log(tmp_path / "grid/half0A", [round(0.5 + ((i * 7919) % 997) / 2000, 6) for i in range(300)])
    whole = gzip.compress((tmp_path / "grid/half0A/train.log").read_bytes())
    (tmp_path / "grid/half0A/train.log").unlink()
    for at in range(20, len(whole) - 20):  # the first damage zlib itself refuses
        bad = whole[:at] + bytes(b ^ 0xFF for b in whole[at:at + 3]) + whole[at + 3:]
        try:
            gzip.decompress(bad)
        except zlib.error:  # not a CRC error (an OSError), nor a stream that seems to end early (EOFError)
            break
        except (OSError, EOFError):
            continue
    (tmp_path / "grid/half0A/run.o7.gz").write_bytes(bad)
    done = cli("trainer", "grid", "summary", str(tmp_path / "grid"), "--no-progress")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"trainer: error: {tmp_path / 'grid/half0A/run.o7.gz'}: cannot read log: "
                                  "the gzip data is corrupt (Error -3 while decompressing data")


def test_grid_status_notes_a_truncated_log_as_summary_does(tmp_path):
    from tests.test_grid_runner import NET, SOLVER
    from trainer.grid import grid_status
    from trainer.grid.make import GridPlan, make_grid

    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    make_grid(tmp_path / "g", GridPlan(net=str(tmp_path / "net.prototxt"), solver=str(tmp_path / "solver.prototxt"),
                                       data="d/{split}{half}_{phase}", pairs=["AA"], layers=[1], data_later=True),
              warn=lambda line: None)
    write_log(tmp_path / "logs", [0.5, 0.6, 0.7])
    whole = gzip.compress((tmp_path / "logs/train.log").read_bytes())
    cut = next(whole[:at] for at in range(len(whole) - 8, 0, -1)  # the last test's accuracy line is cut off
               if "accuracy = 0.7" not in "".join(_whole_lines_before_the_cut(whole[:at])))
    (tmp_path / "g/half0A/run.o7.gz").write_bytes(cut)
    rows = {row.net: row for row in grid_status(tmp_path / "g")}
    assert rows["half0A"].reason == "ready; truncated log run.o7.gz: scored on the lines before the cut"
    assert rows["half0A"].best_accuracy == 0.6
    assert "truncated" not in (rows["transfer0A0A_1_1"].reason or "")
