"""The solver loop's Caffe arithmetic on a tiny real net: averaged loss lines, output numbering,
iter_size and test averaging, the final snapshot. Expected values come from the raw per-iteration
losses and the formulas of Caffe's Solver::Step / Solve / Test, never from our own log lines."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from google.protobuf import text_format

from datakit.formats import caffe_pb2
from trainer.caffelog import CaffeLog
from trainer.net import Net
from trainer.solver import Solver

# Constant inputs (DummyData, constant fillers): a forward after training sees the same batch as
# every iteration did, so the final loss can be recomputed from the trained net.
NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
    data_filler { type: "constant" value: 0.5 } data_filler { type: "constant" value: 1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" top: "per_class" }
"""


def make_solver(tmp_path, test_nets=(), **fields):
    net = Net(text_format.Parse(NET, caffe_pb2.NetParameter()), caffe_pb2.TRAIN, seed=0)
    param = caffe_pb2.SolverParameter(base_lr=0.5, lr_policy="fixed", snapshot_prefix=str(tmp_path / "s"),
                                      **fields)
    stream = io.StringIO()
    return Solver(param, net, test_nets, log=CaffeLog(stream=stream, prefix=False)), stream


def loss_lines(text):
    return {int(m[1]): float(m[2]) for m in re.finditer(r"^Iteration (\d+), loss = (\S+)$", text, re.M)}


def test_loss_lines_average_the_last_average_loss_iterations_and_the_final_line_too(tmp_path):
    """Iteration N's line is the mean of the raw losses of N-2..N (average_loss 3), fewer at the start;
    the line after the last iteration (Caffe's extra forward in Solve) averages that forward's loss with
    the last two (a raw-loss final line, or a mean over all iterations, fails)."""
    solver, stream = make_solver(tmp_path, max_iter=6, display=2, average_loss=3, snapshot_after_train=False)
    result = solver.solve()
    raw = [loss for _, loss in result.train_losses]
    assert len(raw) == 6 and len(set(raw)) == 6  # the loss moves every iteration
    final = float(solver.net.forward())
    lines = loss_lines(stream.getvalue())
    assert sorted(lines) == [0, 2, 4, 6]
    assert lines[0] == pytest.approx(raw[0], rel=1e-5)
    assert lines[2] == pytest.approx(np.mean(raw[0:3]), rel=1e-5)
    assert lines[4] == pytest.approx(np.mean(raw[2:5]), rel=1e-5)
    assert lines[6] == pytest.approx(np.mean([raw[4], raw[5], final]), rel=1e-5)
    assert lines[6] != pytest.approx(final, rel=1e-5)


def test_train_outputs_print_every_element_numbered_across_outputs(tmp_path):
    """Caffe numbers the output lines with one counter over every element of every output: loss #0,
    acc #1, per_class (3 classes) #2-#4. Printing only the one-element outputs numbered them 0, 1."""
    solver, stream = make_solver(tmp_path, max_iter=1, display=1, snapshot_after_train=False)
    solver.solve()
    text = stream.getvalue()
    got = re.findall(r"^    Train net output #(\d+): (\S+) = (\S+)", text, re.M)
    assert [(int(k), name) for k, name, _ in got[:5]] == [(0, "loss"), (1, "acc"), (2, "per_class"),
                                                          (3, "per_class"), (4, "per_class")]
    # every label is 1: class 1's accuracy is the overall one, the classes without samples are 0
    acc, per = float(got[1][2]), [float(v) for _, _, v in got[2:5]]
    assert per[0] == 0 and per[2] == 0 and per[1] == acc
    assert "(* 1 = " in re.search(r"^    Train net output #0.*$", text, re.M)[0]
    assert "(*" not in re.search(r"^    Train net output #1.*$", text, re.M)[0]  # acc has no loss weight


# A TEST net whose batches differ (DummyData redraws a gaussian and labels 0..2 every forward).
TEST_NET = NET.replace('data_filler { type: "constant" value: 0.5 } data_filler { type: "constant" value: 1 }',
                       'data_filler { type: "gaussian" std: 2 } data_filler { type: "uniform" min: 0 max: 2.999 }')


def test_test_outputs_are_element_means_over_test_iter_batches(tmp_path):
    """Test net output #k is the mean over the test_iter batches of each output element: loss, acc and
    each per-class accuracy (a class absent from a batch adds 0 there, as in Caffe's test_score sums).
    Expected values come from a twin test net run batch by batch here with the trained weights."""
    test_net = Net(text_format.Parse(TEST_NET, caffe_pb2.NetParameter()), caffe_pb2.TEST, seed=5)
    solver, stream = make_solver(tmp_path, [test_net], max_iter=2, test_iter=[3], test_interval=2,
                                 test_initialization=False, snapshot_after_train=False)
    twin = Net(text_format.Parse(TEST_NET, caffe_pb2.NetParameter()), caffe_pb2.TEST, seed=5)
    result = solver.solve()
    twin.share_trained_layers_with(solver.net)
    batches = []
    for _ in range(3):
        twin.forward()
        outs = twin.outputs()
        batches.append(np.concatenate([np.asarray(outs[n], np.float64).reshape(-1) for n in ("loss", "acc", "per_class")]))
    want = np.mean(batches, axis=0)
    assert not np.allclose(batches[-1], want)  # the batches differ: a last-batch report would fail
    got = result.test_scores[0]
    assert result.test_iteration == 2
    np.testing.assert_allclose([got["loss"], got["acc"], got["per_class[0]"], got["per_class[1]"], got["per_class[2]"]],
                               want, rtol=1e-5)
    lines = re.findall(r"^    Test net output #(\d+): (\S+) = (\S+)", stream.getvalue(), re.M)
    assert [(int(k), n) for k, n, _ in lines] == [(0, "loss"), (1, "acc"), (2, "per_class"), (3, "per_class"),
                                                  (4, "per_class")]
    np.testing.assert_allclose([float(v) for _, _, v in lines], want, rtol=1e-5)
    assert "Iteration 2, Testing net (#0)" in stream.getvalue()


def test_iter_size_accumulates_and_divides(tmp_path):
    """Same batch twice with iter_size 2 = one pass with iter_size 1: the summed gradients are divided
    by 2 before the update (forgetting the division doubles the step), and the loss shown is the mean
    of the two passes."""
    weights, losses = [], []
    for iter_size in (1, 2):
        solver, _ = make_solver(tmp_path / str(iter_size), max_iter=3, iter_size=iter_size, momentum=0.9,
                                weight_decay=0.01, snapshot_after_train=False)
        result = solver.solve()
        weights.append(np.array(solver.net.layer("fc").blobs[0].data, dtype=np.float64))
        losses.append([loss for _, loss in result.train_losses])
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


@pytest.mark.parametrize("max_iter,after_train,expected", [(5, True, [2, 4, 5]), (5, False, [2, 4]),
                                                           (4, True, [2, 4])])
def test_snapshot_names_and_the_one_after_training(tmp_path, max_iter, after_train, expected):
    """<prefix>_iter_<N>.caffemodel and .solverstate every `snapshot` iterations, and one after the last
    iteration unless snapshot_after_train is false or the last iteration already has one."""
    solver, stream = make_solver(tmp_path, max_iter=max_iter, snapshot=2, snapshot_after_train=after_train)
    result = solver.solve()
    assert [int(p.caffemodel.name.split("_iter_")[1].split(".")[0]) for p in result.snapshots] == expected
    for n in expected:
        assert (tmp_path / f"s_iter_{n}.caffemodel").is_file() and (tmp_path / f"s_iter_{n}.solverstate").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".caffemodel", ".solverstate")) == sorted(
        f"s_iter_{n}.{ext}" for n in expected for ext in ("caffemodel", "solverstate"))
    assert f"Snapshotting to binary proto file {tmp_path / f's_iter_{expected[-1]}.caffemodel'}" in stream.getvalue()


def test_each_test_pass_reads_on_from_where_the_last_one_stopped(tmp_path):
    """Caffe's test net keeps its data cursor between test passes: with 10 records, batch 2 and test_iter 2,
    the pass at iteration 0 scores records 0-3 and the pass at iteration 1 records 4-7 (a cursor reset
    per pass would score 0-3 twice). The labels (= record numbers) seen by the loss layer show it."""
    from tests.test_data_layers import make_lmdb
    make_lmdb(tmp_path / "db", n=10)
    test_text = f"""
    layer {{ name: "d" type: "Data" top: "data" top: "label"
      data_param {{ source: "{tmp_path / 'db'}" batch_size: 2 backend: LMDB }} }}
    layer {{ name: "fc_t" type: "InnerProduct" bottom: "data" top: "s" inner_product_param {{ num_output: 10 }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss" }}
    """
    test_net = Net(text_format.Parse(test_text, caffe_pb2.NetParameter()), caffe_pb2.TEST, seed=0)
    seen: list[int] = []
    forward = test_net.forward

    def spy():
        out = forward()
        seen.extend(int(v) for v in np.asarray(test_net.blobs["label"].data).reshape(-1))
        return out
    test_net.forward = spy
    solver, stream = make_solver(tmp_path, [test_net], max_iter=1, test_iter=[2], test_interval=1,
                                 snapshot_after_train=False)
    solver.solve()
    assert stream.getvalue().count("Testing net (#0)") == 2
    assert seen == [0, 1, 2, 3, 4, 5, 6, 7]
    test_net.layer("d").close()


def test_the_solver_computes_the_rate_in_the_nets_dtype(tmp_path):
    """A float32 net's rate is Caffe's float one: LeNet's inv policy at iteration 600 prints 0.0095724
    (Caffe's log), not the double formula's 0.00957239."""
    from trainer.caffelog import fmt
    solver, _ = make_solver(tmp_path, max_iter=1)
    solver.param.lr_policy, solver.param.base_lr, solver.param.gamma, solver.param.power = "inv", 0.01, 1e-4, 0.75
    solver.iter = 600
    assert solver.net.dtype == np.float32 and fmt(solver.rate()) == "0.0095724"


def test_clipping_logs_caffes_line_with_the_norm_of_all_gradients(tmp_path):
    """clip_gradients 0.01: each update prints Caffe's "Gradient clipping: scaling down gradients (L2 norm
    N > 0.01) by scale factor 0.01/N", N the norm of the first iteration's gradient, worked out here by a
    twin net's forward/backward with the same weights."""
    solver, stream = make_solver(tmp_path, max_iter=2, clip_gradients=0.01, snapshot_after_train=False)
    twin = Net(text_format.Parse(NET, caffe_pb2.NetParameter()), caffe_pb2.TRAIN, seed=0)
    twin.clear_param_diffs()
    twin.forward()
    twin.backward()
    norm = float(np.sqrt(sum((np.asarray(p.diff, np.float64) ** 2).sum() for p in twin.learnable_params)))
    solver.solve()
    lines = re.findall(r"^Gradient clipping: scaling down gradients \(L2 norm (\S+) > (\S+)\) by scale factor (\S+)$",
                       stream.getvalue(), re.M)
    assert len(lines) == 2
    assert float(lines[0][0]) == pytest.approx(norm, rel=1e-5) and lines[0][1] == "0.01"
    assert float(lines[0][2]) == pytest.approx(0.01 / norm, rel=1e-5)
    quiet, stream2 = make_solver(tmp_path / "q", max_iter=2, snapshot_after_train=False)
    quiet.solve()
    assert "Gradient clipping" not in stream2.getvalue()


def test_test_interval_without_test_iter_trains_without_tests_and_says_so(tmp_path):
    """Caffe builds no test net without test_iter and trains on, test_interval unused; we refused the solver."""
    solver, stream = make_solver(tmp_path, max_iter=3, test_interval=2, snapshot_after_train=False)
    result = solver.solve()
    assert result.iterations == 3 and result.test_scores == []
    text = stream.getvalue()
    assert "Testing net" not in text
    [warning] = [line for line in text.splitlines() if "test_interval" in line]
    assert warning.endswith("solver: test_interval is set but there is no test_iter, so no test net: training runs "
                            "without tests (give test_iter to test the net's TEST phase)")
