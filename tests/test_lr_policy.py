"""trainer.lr_policy: the learning-rate policies against Caffe's formulas."""

from __future__ import annotations

import math

import pytest

from datakit.errors import ConfigError
from datakit.formats import caffe_pb2
from trainer import lr_policy


@pytest.mark.parametrize("it", [0, 1, 99, 100, 101, 2500, 9999])
def test_lr_policies_match_caffe_formulas(it):
    base, gamma, power, stepsize, max_iter = 0.01, 0.1, 0.75, 100, 10000
    lr = lambda policy, **kw: lr_policy.learning_rate(policy, it, base_lr=base, **kw)  # noqa: E731
    assert lr("fixed") == base
    assert lr("step", gamma=gamma, stepsize=stepsize) == pytest.approx(base * gamma ** (it // stepsize))
    assert lr("exp", gamma=0.999) == pytest.approx(base * 0.999 ** it)
    assert lr("inv", gamma=1e-4, power=power) == pytest.approx(base * (1 + 1e-4 * it) ** -power)
    steps = [50, 100, 3000]
    passed = sum(1 for s in steps if it >= s)
    assert lr("multistep", gamma=gamma, stepvalues=steps) == pytest.approx(base * gamma ** passed)
    assert lr("poly", power=2.0, max_iter=max_iter) == pytest.approx(base * (1 - it / max_iter) ** 2)
    assert lr("sigmoid", gamma=-0.01, stepsize=500) == pytest.approx(
        base / (1 + math.exp(0.01 * (it - 500))))


def test_lenet_inv_rate_at_known_iterations():
    # Caffe's LeNet solver: lr at 10000 is 0.01 * (1 + 1)^-0.75 = 0.0059460...
    rate = lr_policy.learning_rate("inv", 10000, base_lr=0.01, gamma=1e-4, power=0.75)
    assert rate == pytest.approx(0.00594604, rel=1e-5)


def test_current_step_for_snapshot():
    assert lr_policy.current_step("step", 250, stepsize=100) == 2
    assert lr_policy.current_step("multistep", 100, stepvalues=[50, 100, 200]) == 2
    assert lr_policy.current_step("fixed", 123) == 0


def test_unknown_policy_and_bad_fields_are_config_errors():
    with pytest.raises(ConfigError, match="lr_policy"):
        lr_policy.learning_rate("cosine", 1, base_lr=0.1)
    p = caffe_pb2.SolverParameter(lr_policy="step", base_lr=0.1)
    with pytest.raises(ConfigError, match="stepsize"):
        lr_policy.check_policy(p)


@pytest.mark.parametrize("it,expected", [(0, 0.01 / (1 + math.exp(-10.0))), (100, 0.005), (10000, 0.0)])
def test_sigmoid_far_past_stepsize_decays_to_zero_instead_of_overflowing(it, expected):
    """A decaying sigmoid (gamma < 0) 9900 steps past stepsize: e^990 overflows a float, and Caffe's
    rate is then 1/(1+inf) = 0. The plain formula raised OverflowError (math.exp) at that iteration."""
    rate = lr_policy.learning_rate("sigmoid", it, base_lr=0.01, gamma=-0.1, stepsize=100)
    assert rate == pytest.approx(expected, abs=1e-300)


def test_poly_reaches_zero_at_max_iter_and_multistep_counts_a_stepvalue_on_its_iteration():
    """poly: (1 - it/max_iter)^power is 0 at it = max_iter (a `1 - it/(max_iter+1)` slip would not be);
    multistep: the rate drops at the stepvalue's own iteration (Caffe's `iter >= stepvalue`), not one later."""
    assert lr_policy.learning_rate("poly", 100, base_lr=0.1, power=0.5, max_iter=100) == 0.0
    assert lr_policy.learning_rate("poly", 75, base_lr=0.1, power=0.5, max_iter=100) == pytest.approx(0.05)
    lr = lambda it: lr_policy.learning_rate("multistep", it, base_lr=1.0, gamma=0.5, stepvalues=[3, 5])  # noqa: E731
    assert [lr(it) for it in range(7)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert lr_policy.learning_rate("step", 9, base_lr=1.0, gamma=0.5, stepsize=3) == 0.125


def test_step_rates_equal_every_lr_line_of_a_real_caffe_run(shared_data):
    """Every `Iteration N, lr = X` line of the half0A ImageNet run (2014 Caffe, step policy, 0.01 x 0.1
    every 100,000 iterations, both of its log files: iterations 20 .. 450,000) is our rate at N printed as
    C++ prints a float. It pins the step boundary to the iteration itself (lr 0.001 at 100000, not at
    100001) and the last rate, 1e-06 at max_iter."""
    import gzip
    import re

    from google.protobuf import text_format

    from trainer.caffelog import fmt
    run = shared_data / "caffe_logs" / "half0A"
    param = text_format.Parse((run / "imagenet_solver.prototxt").read_text(), caffe_pb2.SolverParameter())
    checked = 0
    for log in sorted(run.glob("*.gz")):
        with gzip.open(log, "rt", encoding="utf-8", errors="replace") as f:
            for m in re.finditer(r"\] Iteration (\d+), lr = (\S+)$", f.read(), re.M):
                it = int(m[1])
                assert fmt(lr_policy.rate_for(param, it)) == m[2], f"{log.name}: iteration {it}"
                checked += 1
    assert checked > 20000
    assert fmt(lr_policy.rate_for(param, 99999)) == "0.01" and fmt(lr_policy.rate_for(param, 100000)) == "0.001"


# `Iteration N, lr = X` lines of a Caffe LeNet run (examples/mnist/lenet_solver.prototxt: inv, base_lr 0.01,
# gamma 1e-4, power 0.75), as Caffe 2015 printed them for its float net (a public training log).
LENET_LR_LINES = {100: "0.00992565", 200: "0.00985258", 300: "0.00978075", 400: "0.00971013", 500: "0.00964069",
                  600: "0.0095724", 700: "0.00950522", 800: "0.00943913", 900: "0.00937411", 1000: "0.00931012",
                  9000: "0.00617924", 9100: "0.00615496", 9200: "0.0061309", 9300: "0.00610706", 9400: "0.00608343",
                  9500: "0.00606002", 9600: "0.00603682", 9700: "0.00601382", 9800: "0.00599102", 9900: "0.00596843"}


def test_a_float_nets_rate_is_computed_in_float_as_caffes(shared_data):
    """Caffe computes the rate in the net's Dtype: for a float net, pow(float, float). Its LeNet log prints
    0.0095724 at iteration 600, where the same formula in double prints 0.00957239 (a 1-ulp-of-print
    difference in the log and in every update). Our float32 rate prints every line as Caffe did."""
    import numpy as np
    from google.protobuf import text_format

    from trainer.caffelog import fmt
    param = caffe_pb2.SolverParameter()
    text_format.Parse((shared_data / "models/lenet/lenet_solver.prototxt").read_text(), param)
    assert (param.lr_policy, param.base_lr, param.power) == ("inv", pytest.approx(0.01), pytest.approx(0.75))
    got = {it: fmt(lr_policy.rate_for(param, it, np.float32)) for it in LENET_LR_LINES}
    assert got == LENET_LR_LINES
    assert fmt(lr_policy.rate_for(param, 600, np.float64)) == "0.00957239"  # a double net: Caffe<double>'s rate
