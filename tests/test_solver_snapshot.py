"""SolverState files: Caffe's layout, the resume sidecar, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datakit.errors import FormatError
from datakit.formats import caffe_pb2
from trainer.snapshot import read_solverstate, snapshot_paths, write_snapshot


def test_paths_are_caffes():
    p = snapshot_paths("snaps/lenet", 5000)
    assert str(p.caffemodel) == "snaps/lenet_iter_5000.caffemodel"
    assert str(p.solverstate) == "snaps/lenet_iter_5000.solverstate"


def test_round_trip_with_history_and_sidecar(tmp_path):
    hist = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([0.5], np.float32)]
    net = caffe_pb2.NetParameter(name="n")
    paths = write_snapshot(str(tmp_path / "s/run"), 12, net, hist, 1, {"iter": 12, "losses": [1.0]})
    raw = caffe_pb2.SolverState()
    raw.ParseFromString(paths.solverstate.read_bytes())
    assert raw.iter == 12 and raw.current_step == 1 and raw.learned_net == str(paths.caffemodel)
    assert list(raw.history[0].shape.dim) == [2, 3]
    state = read_solverstate(paths.solverstate)
    assert state.iter == 12 and state.learned_net == paths.caffemodel
    np.testing.assert_array_equal(state.history[0], hist[0])
    assert state.extra["losses"] == [1.0]


def test_learned_net_found_beside_the_state_when_moved(tmp_path):
    paths = write_snapshot(str(tmp_path / "a/run"), 3, caffe_pb2.NetParameter(), [], 0, None)
    moved = tmp_path / "b"
    moved.mkdir()
    for p in (paths.caffemodel, paths.solverstate):
        p.rename(moved / p.name)
    state = read_solverstate(moved / paths.solverstate.name)
    assert state.learned_net == moved / paths.caffemodel.name and state.extra is None


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FormatError, match="missing.solverstate: cannot read"):
        read_solverstate(tmp_path / "missing.solverstate")
    bad = tmp_path / "bad.solverstate"
    bad.write_bytes(b"\xff\xff\xff")
    with pytest.raises(FormatError, match="bad.solverstate: not a Caffe SolverState"):
        read_solverstate(bad)
    paths = write_snapshot(str(tmp_path / "c/run"), 3, caffe_pb2.NetParameter(), [], 0, None)
    paths.caffemodel.unlink()
    with pytest.raises(FormatError, match="weights file .*run_iter_3.caffemodel is missing"):
        read_solverstate(paths.solverstate)
    paths = write_snapshot(str(tmp_path / "d/run"), 3, caffe_pb2.NetParameter(), [], 0, {"x": 1})
    paths.sidecar.write_text(json.dumps({"format": "other"}))
    with pytest.raises(FormatError, match="unknown format"):
        read_solverstate(paths.solverstate)
