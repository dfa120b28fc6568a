"""The Python API: every documented name is callable, lazy, documented, and gives what the CLI gives."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np

import datakit
import trainer
from datakit.db import open_reader
from tests.conftest import ROOT
from tests.test_convert import make_images, write_list


def test_import_is_light():
    code = ("import sys, datakit, trainer\n"
            "heavy = [m for m in ('numpy', 'cv2', 'lmdb', 'h5py', 'torch', 'onnx', 'datakit.convert', 'trainer.net')"
            " if m in sys.modules]\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def readme_calls() -> set[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    return set(re.findall(r"\b(datakit|trainer)\.([a-z_]+)\(", text))


def test_every_name_in_the_readme_and_api_is_callable_and_documented():
    calls = readme_calls()
    assert {("datakit", "assemble"), ("datakit", "convert"), ("datakit", "mean"), ("trainer", "fit")} <= calls
    packages = {"datakit": datakit, "trainer": trainer}
    for pkg, name in calls:
        assert name in packages[pkg].API, f"README calls {pkg}.{name} but it is not in {pkg}.API"
    for pkg in packages.values():
        for name, target in pkg.API.items():
            module, _, attr = target.partition(":")
            assert hasattr(__import__(module, fromlist=[attr]), attr), \
                f"{pkg.__name__}.{name}: {module} defines no {attr}(); define the public call there or change {pkg.__name__}.API"
            fn = getattr(pkg, name)
            assert callable(fn), f"{pkg.__name__}.{name}"
            assert fn.__doc__ and len(fn.__doc__) > 40, f"{pkg.__name__}.{name} has no docstring"


def test_every_public_call_is_in_its_modules_all():
    # `from trainer.api import *` in a notebook must give every call `import trainer` offers.
    for pkg in (datakit, trainer):
        for name, target in pkg.API.items():
            module, _, attr = target.partition(":")
            exported = __import__(module, fromlist=[attr]).__all__
            assert attr in exported, f"{pkg.__name__}.{name}: {attr} is missing from {module}.__all__"


def test_stage_names_survive_their_modules_import():
    import datakit.convert as convert_module
    from datakit.convert import ConvertOptions
    assert callable(datakit.convert) and datakit.convert.ConvertOptions is ConvertOptions
    assert convert_module.ConvertOptions is ConvertOptions
    import trainer.fit  # noqa: F401  (the module trainer.fit)
    assert callable(trainer.fit) and trainer.fit.FitOptions.__name__ == "FitOptions"


def test_convert_and_mean_calls_equal_the_cli(tmp_path, cli):
    entries = make_images(tmp_path, 7)
    lst = write_list(tmp_path / "list.txt", entries)
    r = cli("datakit", "convert", str(tmp_path / "img"), str(lst), str(tmp_path / "cli_db"),
            "--resize-height", "16", "--resize-width", "20", "--no-progress")
    assert r.returncode == 0, r.stderr
    summary = datakit.convert(tmp_path / "img", lst, tmp_path / "api_db", resize_height=16, resize_width=20,
                              progress=False)
    assert summary.written == 7
    with open_reader(tmp_path / "cli_db") as a, open_reader(tmp_path / "api_db") as b:
        assert list(a.raw_items()) == list(b.raw_items())
    r = cli("datakit", "mean", str(tmp_path / "cli_db"), str(tmp_path / "cli_mean.binaryproto"), "--no-progress")
    assert r.returncode == 0, r.stderr
    result = datakit.mean(tmp_path / "api_db", tmp_path / "api_mean.binaryproto", progress=False)
    assert result.count == 7 and result.mean.shape == (3, 16, 20)
    assert (tmp_path / "cli_mean.binaryproto").read_bytes() == (tmp_path / "api_mean.binaryproto").read_bytes()
    summary, _ = datakit.inspect(tmp_path / "api_db")
    assert any("7" in line for line in summary.lines())


def test_unknown_option_is_one_clear_error(tmp_path):
    import pytest

    from datakit.errors import ConfigError
    with pytest.raises(ConfigError, match="datakit.convert: unknown option.*resize_heigth"):
        datakit.convert(tmp_path, tmp_path / "l.txt", tmp_path / "db", resize_heigth=3)


def _tiny_project(folder, *, records: tuple[int, int], iterations: int) -> None:
    """tests.test_fit's tiny net and solver in ``folder`` (the current folder), ``iterations`` long."""
    from tests.test_fit import NET, SOLVER, make_db
    make_db(folder / "train_lmdb", records[0], 0)
    make_db(folder / "test_lmdb", records[1], 1)
    (folder / "net.prototxt").write_text(NET.format(train="train_lmdb", test="test_lmdb", conv_lr=1, fc="fc", classes=3))
    (folder / "solver.prototxt").write_text(SOLVER.format(net="net.prototxt", max_iter=iterations, snapshot=0,
                                                          prefix="snap/t", base_lr=0.05, test_interval=iterations))


def test_fit_call_trains_like_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _tiny_project(tmp_path, records=(32, 20), iterations=10)
    result = trainer.fit("solver.prototxt", device="cpu", quiet=True)
    assert result.iterations == 10 and (tmp_path / "snap/t_iter_10.caffemodel").is_file()
    scores = trainer.test("net.prototxt", "snap/t_iter_10.caffemodel", iterations=2, device="cpu")
    assert "accuracy" in scores.means and np.isfinite(scores.mean_loss)


def cli_options(command: str) -> set[str]:
    """The long options of `trainer COMMAND`, as the keyword arguments the README says the call takes."""
    import argparse
    import importlib
    parser = argparse.ArgumentParser()
    importlib.import_module(f"cli.trainer_cmd_{command}").add_arguments(parser)
    return {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}


def test_trainer_calls_take_their_commands_options():
    # --report writes the result the call returns; `trainer test --quiet` hides lines the call never prints
    import inspect
    cli_only = {"fit": {"report"}, "test": {"report", "quiet", "progress"}, "export": {"output"}}
    for command, only in cli_only.items():
        params = set(inspect.signature(getattr(trainer, command)).parameters)
        missing = cli_options(command) - only - params
        assert not missing, f"trainer.{command}() lacks the options of `trainer {command}`: {sorted(missing)}"


def test_fit_again_needs_restart_as_the_cli(tmp_path, monkeypatch):
    import pytest

    from datakit.errors import ConfigError
    monkeypatch.chdir(tmp_path)
    _tiny_project(tmp_path, records=(16, 8), iterations=2)
    trainer.fit("solver.prototxt", device="cpu", quiet=True)
    with pytest.raises(ConfigError, match="--restart"):   # a notebook cell run a second time
        trainer.fit("solver.prototxt", device="cpu", quiet=True)
    assert trainer.fit("solver.prototxt", device="cpu", quiet=True, restart=True, progress=False).iterations == 2


def test_export_takes_a_mean_file_and_mean_values_as_the_cli(tmp_path):
    import pytest
    pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[test]' installs it)")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from datakit.errors import ConfigError
    from datakit.formats.blobproto import write_mean
    net = ('name: "p" input: "data" input_shape { dim: 1 dim: 3 dim: 4 dim: 4 } layer { name: "conv" '
           'type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }')
    (tmp_path / "deploy.prototxt").write_text(net)
    mean = np.arange(3 * 6 * 6, dtype=np.float32).reshape(3, 6, 6)
    write_mean(tmp_path / "mean.binaryproto", mean)
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 4, 4)).astype(np.float32)

    def run(path, **kw):
        out = trainer.export(tmp_path / "deploy.prototxt", None, tmp_path / path, **kw)
        return ort.InferenceSession(str(out)).run(["conv"], {"data": x})[0]
    from_file = run("file.onnx", mean=tmp_path / "mean.binaryproto", scale=0.5)
    np.testing.assert_array_equal(from_file, run("array.onnx", mean=mean, scale=0.5))
    np.testing.assert_array_equal(run("values.onnx", mean_value=[1, 2, 3]), run("list.onnx", mean=[1, 2, 3]))
    with pytest.raises(ConfigError, match="safetensors holds weights only"):
        trainer.export(tmp_path / "deploy.prototxt", None, tmp_path / "w.safetensors", mean=str(tmp_path / "mean.binaryproto"))
