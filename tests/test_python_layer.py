"""Python layers (type "Python"): pycaffe-style classes run unchanged, learn, snapshot and resume."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from datakit.errors import ConfigError
from datakit.formats.caffemodel import caffemodel_blobs, read_caffemodel
from tests.test_layers import check_gradients, make_layer, rand, run_forward
from trainer.fit import FitOptions, fit
from trainer.layers.python_layer import PythonLayerError
from trainer.net import Net

LAYERS = Path(__file__).parent / "pylayers"


@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(LAYERS))
    yield
    sys.modules.pop("pycaffe_layers", None)


def py(layer: str, param_str: str = "") -> str:
    return f'type: "Python" python_param {{ module: "pycaffe_layers" layer: "{layer}" param_str: "{param_str}" }}'


def test_python_layers_forward_backward_and_learnable_blobs(on_path):
    x = rand(4, 2, 3)
    layer, b, t = make_layer(py("ScaleBy", "2.5"), [x])
    np.testing.assert_allclose(run_forward(layer, b, t)[0], 2.5 * x)
    check_gradients(layer, b, t)
    layer, b, t = make_layer(py("Affine", "3"), [x])
    assert [blob.shape for blob in layer.blobs] == [(3, 6), (3,)]
    np.testing.assert_allclose(run_forward(layer, b, t)[0], x.reshape(4, -1) @ layer.blobs[0].data.T)
    check_gradients(layer, b, t)      # param diffs accumulate with +=, as Caffe's zeroed diffs expect
    layer, b, t = make_layer(py("EuclideanLoss"), [x, rand(4, 2, 3)])
    # pyloss.py keeps its difference in float32: a wider step and tolerance for a float64 check
    check_gradients(layer, b, t, top_weights=[np.array([1.0])], eps=1e-2, tol=1e-4)


def test_a_failing_python_layer_names_module_class_method_and_line(on_path, tmp_path):
    layer, b, t = make_layer(py("Broken"), [rand(2, 2)])
    with pytest.raises(PythonLayerError, match=r"layer under_test \(Python pycaffe_layers.Broken\): "
                                               r"pycaffe_layers.Broken.forward failed at .*pycaffe_layers.py:\d+: "
                                               r"ValueError: boom in forward"):
        run_forward(layer, b, t)
    with pytest.raises(PythonLayerError, match=r"ScaleBy.setup failed .*Exception: ScaleBy takes one bottom"):
        make_layer(py("ScaleBy"), [rand(2), rand(2)])
    with pytest.raises(ConfigError, match="module 'pycaffe_layers' .* has no such class"):
        make_layer(py("Nope"), [rand(2)])
    with pytest.raises(ConfigError, match="python_param.module 'no_such_module': no such module on PYTHONPATH"):
        make_layer('type: "Python" python_param { module: "no_such_module" layer: "X" }', [rand(2)])


NET = '''name: "pynet"
layer { name: "data" type: "Python" top: "x" top: "y" python_param { module: "pycaffe_layers" layer: "Regression" param_str: "7" } }
layer { name: "scale" type: "Python" bottom: "x" top: "xs" python_param { module: "pycaffe_layers" layer: "ScaleBy" param_str: "0.5" } }
layer { name: "fc" type: "Python" bottom: "xs" top: "pred" python_param { module: "pycaffe_layers" layer: "Affine" param_str: "3" }
  param { lr_mult: 1 } param { lr_mult: 2 } }
layer { name: "loss" type: "Python" bottom: "pred" bottom: "y" top: "loss" loss_weight: 1
  python_param { module: "pycaffe_layers" layer: "EuclideanLoss" } }
'''


def project(folder: Path, name: str, **solver: object) -> str:
    """A solver and net in ``folder`` with the layer module beside the net (not on PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(LAYERS / "pycaffe_layers.py", folder / "pycaffe_layers.py")
    (folder / "net.prototxt").write_text(NET)
    settings = {"base_lr": 0.1, "lr_policy": '"fixed"', "momentum": 0.9, "max_iter": 10, "display": 1,
                "snapshot": 5, "random_seed": 1, "snapshot_prefix": f'"{folder}/{name}"', **solver}
    text = f'net: "{folder}/net.prototxt"\n' + "".join(f"{k}: {v}\n" for k, v in settings.items())
    (folder / f"{name}.solver").write_text(text)
    return str(folder / f"{name}.solver")


def run(solver: str, **kw) -> list[float]:
    result = fit(FitOptions(solver=solver, device="cpu", stream=io.StringIO(), handle_signals=False, **kw))
    return [v for _, v in result.train_losses]


def test_python_layers_train_in_fit_and_their_blobs_survive_snapshot_and_resume(tmp_path):
    assert "pycaffe_layers" not in sys.modules or sys.modules.pop("pycaffe_layers")
    whole = run(project(tmp_path / "a", "run"))
    assert whole[-1] < 0.5 * whole[0]                       # it learns
    blobs = caffemodel_blobs(read_caffemodel(tmp_path / "a/run_iter_5.caffemodel"))
    assert [b.shape for b in blobs["fc"]] == [(3, 5), (3,)]  # the Python layer's blobs are in the snapshot
    solver = project(tmp_path / "b", "run")
    run(solver, max_iter=5)
    rest = run(solver, snapshot=str(tmp_path / "b/run_iter_5.solverstate"))
    np.testing.assert_allclose(rest, whole[5:], rtol=1e-6)   # momentum history and weights restored
    final_a = caffemodel_blobs(read_caffemodel(tmp_path / "a/run_iter_10.caffemodel"))["fc"]
    final_b = caffemodel_blobs(read_caffemodel(tmp_path / "b/run_iter_10.caffemodel"))["fc"]
    for x, y in zip(final_a, final_b):
        np.testing.assert_allclose(y, x, rtol=1e-6)
    with Net.from_file(tmp_path / "a/net.prototxt") as net:   # --weights style copy into a fresh net
        from trainer.weights import load_weights
        assert load_weights(net, tmp_path / "a/run_iter_10.caffemodel").copied == ["fc"]
        np.testing.assert_array_equal(net.layer("fc").blobs[0].data, final_a[0])


def test_trainer_fit_cli_runs_python_layers_and_reports_their_failure_in_one_line(tmp_path, cli):
    solver = project(tmp_path / "c", "run", max_iter=3, snapshot=0)
    res = cli("trainer", "fit", "--solver", solver, "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "c/run_iter_3.caffemodel").is_file()
    net = tmp_path / "c/net.prototxt"
    net.write_text(NET.replace('layer: "ScaleBy"', 'layer: "Broken"'))
    # --restart: the first run's snapshots are there, and fit refuses to start over them silently
    res = cli("trainer", "fit", "--solver", solver, "--device", "cpu", "--restart", cwd=tmp_path)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert "layer scale (Python pycaffe_layers.Broken): pycaffe_layers.Broken.forward failed at " in last
    assert last.endswith("ValueError: boom in forward") and "Traceback" not in res.stderr
