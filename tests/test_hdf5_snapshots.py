"""Caffe's HDF5 snapshots (snapshot_format: HDF5): the layout of net.cpp ToHDF5 and
sgd_solver.cpp SnapshotSolverStateToHDF5, written by fit, read by --weights, --snapshot,
`trainer test` and `datakit describe`."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest

from datakit.formats import caffe_pb2
from datakit.formats.caffemodel import read_caffemodel
from tests.test_fit import project  # noqa: F401  (fixture: a tiny LMDB project in tmp_path)
from trainer.fit import FitOptions, fit
from trainer.snapshot import read_solverstate, write_snapshot


def _net() -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter(name="n")
    conv = net.layer.add(name="conv1", type="Convolution")
    w = conv.blobs.add()
    w.shape.dim.extend([2, 1, 3, 3])
    w.data.extend(np.arange(18, dtype=np.float32).tolist())
    b = conv.blobs.add()
    b.shape.dim.extend([2])
    b.data.extend([0.5, -0.5])
    net.layer.add(name="relu1", type="ReLU")
    return net


def test_written_files_have_caffes_layout(tmp_path):
    history = [np.full((2, 1, 3, 3), 0.25, np.float32), np.array([1.0, 2.0], np.float32)]
    paths = write_snapshot(str(tmp_path / "h"), 7, _net(), history, 2, {"iter": 7}, hdf5=True)
    assert paths.caffemodel.name == "h_iter_7.caffemodel.h5" and paths.solverstate.name == "h_iter_7.solverstate.h5"
    with h5py.File(paths.caffemodel, "r") as f:
        assert list(f) == ["data"]                          # no 'diff' group without snapshot_diff
        assert sorted(f["data"]) == ["conv1", "relu1"]      # every layer has a group, blobs or not
        assert list(f["data/relu1"]) == []
        assert sorted(f["data/conv1"]) == ["0", "1"]
        assert f["data/conv1/0"].dtype == np.float32 and f["data/conv1/0"].shape == (2, 1, 3, 3)
        np.testing.assert_array_equal(f["data/conv1/0"][()].reshape(-1), np.arange(18, dtype=np.float32))
        assert f["data/conv1/1"].shape == (2,)
    with h5py.File(paths.solverstate, "r") as f:
        assert sorted(f) == ["current_step", "history", "iter", "learned_net"]
        for name, value in (("iter", 7), ("current_step", 2)):     # H5LTmake_dataset_int, rank 1, dims {1}
            assert f[name].dtype == np.int32 and f[name].shape == (1,) and f[name][0] == value
        learned = f["learned_net"]                                 # H5LTmake_dataset_string: scalar C string
        assert learned.shape == () and learned.id.get_type().get_class() == h5py.h5t.STRING
        assert learned.id.get_type().get_strpad() == h5py.h5t.STR_NULLTERM
        assert learned[()].rstrip(b"\0").decode() == str(paths.caffemodel)
        assert sorted(f["history"]) == ["0", "1"]
        assert f["history/0"].dtype == np.float32 and f["history/0"].shape == (2, 1, 3, 3)


def test_round_trip_and_a_file_built_by_hand_as_caffe_writes_it(tmp_path):
    history = [np.linspace(0, 1, 18, dtype=np.float32).reshape(2, 1, 3, 3), np.array([3.0, 4.0], np.float32)]
    paths = write_snapshot(str(tmp_path / "r"), 3, _net(), history, 1, None, hdf5=True, write_diff=True)
    state = read_solverstate(paths.solverstate)
    assert (state.iter, state.current_step, state.learned_net, state.extra) == (3, 1, paths.caffemodel, None)
    for a, b in zip(state.history, history):
        np.testing.assert_array_equal(a, b)
    model = read_caffemodel(paths.caffemodel)
    conv = [layer for layer in model.layer if layer.name == "conv1"][0]
    assert list(conv.blobs[0].shape.dim) == [2, 1, 3, 3] and list(conv.blobs[1].data) == [0.5, -0.5]
    with h5py.File(paths.caffemodel, "r") as f:
        assert sorted(f) == ["data", "diff"] and sorted(f["diff/conv1"]) == ["0", "1"]

    # Built with h5py from the documented layout alone (not by our writer): what Caffe's files hold.
    hand = tmp_path / "caffe_iter_5.solverstate.h5"
    with h5py.File(tmp_path / "caffe_iter_5.caffemodel.h5", "w") as f:
        f.create_dataset("data/conv1/0", data=np.ones((2, 1, 3, 3), np.float32))
        f.create_dataset("data/conv1/1", data=np.zeros(2, np.float32))
        f.create_group("data/relu1")
    with h5py.File(hand, "w") as f:
        f["iter"] = np.array([5], np.int32)
        f["current_step"] = np.array([0], np.int32)
        f["learned_net"] = np.bytes_(b"/elsewhere/caffe_iter_5.caffemodel.h5")   # found beside the state
        f.create_dataset("history/0", data=np.zeros((2, 1, 3, 3), np.float32))
        f.create_dataset("history/1", data=np.zeros(2, np.float32))
    state = read_solverstate(hand)
    assert state.iter == 5 and state.learned_net == tmp_path / "caffe_iter_5.caffemodel.h5"
    assert [h.shape for h in state.history] == [(2, 1, 3, 3), (2,)]


def test_fit_writes_hdf5_snapshots_and_resumes_from_them(project, tmp_path, cli):  # noqa: F811
    opts = dict(device="cpu", handle_signals=False)
    whole = fit(FitOptions(solver=project("a.prototxt", max_iter=20, prefix="a/run"), stream=io.StringIO(), **opts))
    name = project("h.prototxt", max_iter=20, snapshot=10, prefix="h/run")
    with open(tmp_path / name, "a") as f:
        f.write("snapshot_format: HDF5\n")
    log = io.StringIO()
    half = fit(FitOptions(solver=name, max_iter=10, stream=log, **opts))
    assert "Snapshotting solver state to HDF5 file h/run_iter_10.solverstate.h5" in log.getvalue()
    assert sorted(p.name for p in (tmp_path / "h").glob("run_iter_*")) == [
        "run_iter_10.caffemodel.h5", "run_iter_10.solverstate.h5", "run_iter_10.solverstate.h5.json"]
    assert [v for _, v in half.train_losses] == [v for _, v in whole.train_losses[:10]]
    with pytest.raises(Exception, match=r"--snapshot h/run_iter_10\.solverstate\.h5"):
        fit(FitOptions(solver=name, stream=io.StringIO(), **opts))   # an HDF5 set counts as finished work too
    rest = fit(FitOptions(solver=name, snapshot="h/run_iter_10.solverstate.h5", stream=io.StringIO(), **opts))
    assert [v for _, v in rest.train_losses] == [v for _, v in whole.train_losses[10:]]

    res = cli("trainer", "test", "--model", "h.prototxt.net", "--weights", "h/run_iter_20.caffemodel.h5",
              "--iterations", "2", "--device", "cpu", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "accuracy = " in res.stdout and "Weights: copied 2 layer(s)" in res.stderr
    res = cli("datakit", "describe", "h/run_iter_20.caffemodel.h5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "(Caffe HDF5 weights" in res.stdout and "conv1" in res.stdout and "4x3x3x3" in res.stdout
    res = cli("datakit", "describe", "h/run_iter_20.solverstate.h5", cwd=tmp_path)
    assert res.returncode == 0 and "iter 20" in res.stdout and "4 history blobs" in res.stdout
