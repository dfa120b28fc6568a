"""`trainer grid make` refuses a spec with a typo in one line, before it writes any folder.

A typo in --layers / --num-output used to end in a ValueError traceback; a data template without
{phase} (or {half}, or {split} with several splits) made a grid whose nets tested on their training
data (or trained both halves on the same classes) with no word; --num-output C=5 was ignored; and
--reduced without --reduced-data was refused only after every other net folder had been written.
"""

from __future__ import annotations

import re

import pytest

from datakit.errors import ConfigError
from tests.test_grid_runner import NET, SOLVER
from trainer.grid.make import GridPlan, make_grid


@pytest.fixture
def files(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return tmp_path


def plan(root, **kw) -> GridPlan:
    """A plan over data that does not exist (these tests never train): data_later, as `--data-later`."""
    kw.setdefault("data", "data/{split}{half}_{phase}_lmdb")
    kw.setdefault("data_later", True)
    return GridPlan(net=str(root / "net.prototxt"), solver=str(root / "solver.prototxt"), **kw)


@pytest.mark.parametrize("kw, message", [
    ({"data": "data/{split}{half}_lmdb"}, r"has no \{phase\}: the test nets would read the training data"),
    ({"data": "data/{split}_{phase}_lmdb"}, r"has no \{half\}: the nets of halves A and B"),
    ({"data": "data/{half}_{phase}_lmdb", "splits": ["0", "1"]}, r"has no \{split\}: every split"),
    ({"data": "data/{half}_{phase}_lmdb", "natman": True}, r"has no \{split\}"),
    ({"mean": "m/{hlf}.binaryproto"}, r"--mean 'm/\{hlf\}.binaryproto': unknown placeholder \{hlf\}"),
    ({"num_output": {"C": 5}}, r"--num-output: no half 'C' in this grid \(its halves: A, B\)"),
    ({"num_output": {"": 0}}, r"--num-output: a class count must be at least 1"),
    ({"reduced": [1, 10]}, r"--reduced needs --reduced-data"),
    ({"reduced": [1, 10], "reduced_data": "r/{phase}_lmdb"}, r"has no \{per_class\}"),
    ({"reduced": [1], "reduced_data": "r/1_lmdb"}, r"--reduced-data 'r/1_lmdb' has no \{phase\}"),
    ({"splits": ["0", "a/b"]}, r"--splits: 'a/b' is not a split name: digits only"),
    ({"splits": ["natman"]}, r"give --natman"),
    # a per-half mean filled in for a reduced net (no split, no half) was the path m/0None.binaryproto
    ({"reduced": [1], "reduced_data": "r/{phase}", "mean": "m/{split}{half}.binaryproto"},
     r"--mean 'm/\{split\}\{half\}.binaryproto' names \{half\}, which the reduced-volume nets .* --reduced-mean"),
    ({"reduced_mean": "m/all.binaryproto"}, r"--reduced-mean is the mean of the --reduced nets; give --reduced too"),
    ({"reduced": [1], "reduced_data": "r/{phase}", "reduced_mean": "m/{hlf}"}, r"--reduced-mean 'm/\{hlf\}': unknown"),
])
def test_a_bad_plan_is_refused_before_any_folder_is_written(files, kw, message):
    with pytest.raises(ConfigError, match=message):
        make_grid(files / "grid", plan(files, **kw))
    assert not (files / "grid").exists()


def test_reduced_nets_read_their_own_mean_and_the_halves_theirs(files):
    make_grid(files / "grid", plan(files, layers=[1], mean=f"{files}/m/{{split}}{{half}}.binaryproto", reduced=[1, 10],
                                   reduced_data="r/{per_class}_{phase}",
                                   reduced_mean=f"{files}/m/all_{{per_class}}.binaryproto"))

    def mean_of(name: str) -> str:
        text = (files / "grid" / name / "train_val.prototxt").read_text()
        return re.findall(r'mean_file: "([^"]+)"', text)[0]
    assert mean_of("half0B") == "../../m/0B.binaryproto"
    assert mean_of("reduced-0010") == "../../m/all_10.binaryproto"
    # a --mean without {split} / {half} is the reduced nets' too, as before
    make_grid(files / "g2", plan(files, layers=[1], mean=f"{files}/m/all.binaryproto", reduced=[1],
                                 reduced_data="r/{phase}"))
    assert re.findall(r'mean_file: "([^"]+)"', (files / "g2" / "reduced-0001" / "train_val.prototxt").read_text()) \
        == ["../../m/all.binaryproto"] * 2


def test_a_template_without_split_is_fine_for_one_split_and_without_half_for_one_half(files):
    assert make_grid(files / "g1", plan(files, data="d/{half}_{phase}", layers=[1]))[:2] == ["half0A", "half0B"]
    assert make_grid(files / "g2", plan(files, data="d/{phase}", pairs=["AA"], layers=[1]))[0] == "half0A"


@pytest.mark.parametrize("option, value, message", [
    ("--layers", "1-4x", "--layers '1-4x': '1-4x' is not a number or a range such as 1-7"),
    ("--layers", ",", "--layers ',': no numbers given"),
    ("--num-output", "A=5,B", "--num-output 'A=5,B': 'B' is not HALF=K"),
    ("--num-output", "five", "--num-output 'five': 'five' is not a class count"),
    ("--reduced", "1,ten", "--reduced '1,ten': 'ten' is not a number"),
])
def test_cli_typos_are_one_line_not_a_traceback(cli, files, option, value, message):
    done = cli("trainer", "grid", "make", str(files / "grid"), "--net", str(files / "net.prototxt"),
               "--solver", str(files / "solver.prototxt"), "--data", "d/{split}{half}_{phase}",
               "--reduced-data", "r/{per_class}_{phase}", option, value)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"trainer: error: {message}"), done.stderr
    assert not (files / "grid").exists()


def test_jobs_below_one_is_refused_not_taken_as_one(files, cli):
    make_grid(files / "grid", plan(files, layers=[1]))
    for command in (["run", str(files / "grid")], ["summary", str(files / "grid")]):
        done = cli("trainer", "grid", *command, "--jobs", "0")
        assert (done.returncode, done.stderr) == (1, "trainer: error: --jobs must be at least 1, got 0\n")
    assert not (files / "grid/half0A/fit.out").exists()  # nothing was started


def _grid_make(cli, files, *extra: str):
    return cli("trainer", "grid", "make", str(files / "grid"), "--net", str(files / "net.prototxt"),
               "--solver", str(files / "solver.prototxt"), "--data", str(files / "data/{split}{half}_{phase}_lmdb"),
               "--layers", "1", *extra)


def test_data_that_does_not_exist_is_refused_naming_the_path_and_its_option(files, cli):
    """`grid make` wrote a grid over a mistyped data template; `grid run` failed on it net by net later."""
    for path in ("data/0A_train_lmdb", "data/0A_test_lmdb", "data/0B_test_lmdb", "means/0A.binaryproto"):
        (files / path).parent.mkdir(exist_ok=True)
        (files / path).mkdir() if path.endswith("lmdb") else (files / path).write_bytes(b"")
    done = _grid_make(cli, files)
    assert done.returncode == 1 and done.stderr == (
        f"trainer: error: --data '{files}/data/{{split}}{{half}}_{{phase}}_lmdb': {files}/data/0B_train_lmdb does "
        "not exist (split 0, half B, phase train); make the data first, or give --data-later if it will exist "
        "when the grid runs\n")
    assert not (files / "grid").exists()
    (files / "data/0B_train_lmdb").mkdir()
    mean = str(files / "means/0{half}.binaryproto")
    done = _grid_make(cli, files, "--mean", mean, "--reduced", "5,10", "--reduced-data", "r/{per_class}_{phase}",
                      "--reduced-mean", str(files / "means/all.binaryproto"))
    assert done.returncode == 1 and not (files / "grid").exists()
    assert done.stderr.startswith(f"trainer: error: --mean '{mean}': {files}/means/0B.binaryproto does not exist "
                                  "(split 0, half B) (and 5 more data paths); make the data first"), done.stderr
    (files / "means/0B.binaryproto").write_bytes(b"")
    assert _grid_make(cli, files, "--mean", mean).returncode == 0  # everything there: made


def test_data_later_makes_the_grid_with_a_warning(files, cli):
    """Data still being converted, or paths that exist only where the grid runs: said once, then made."""
    done = _grid_make(cli, files, "--data-later")
    assert done.returncode == 0, done.stderr
    assert done.stderr == (f"warning: 4 data paths of the grid do not exist yet, e.g. --data "
                           f"'{files}/data/{{split}}{{half}}_{{phase}}_lmdb': {files}/data/0A_train_lmdb does not exist "
                           "(split 0, half A, phase train); `trainer grid run` fails a net whose data is still missing "
                           "then\n")
    assert (files / "grid/grid.json").is_file()
