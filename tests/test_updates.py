"""trainer.updates: every update rule against hand-written reference steps (Caffe's sgd_solver.cpp)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from datakit.errors import ConfigError
from datakit.formats import caffe_pb2
from trainer.updates import make_rule, solver_type_name


class P:
    """Like trainer.net.Param: data/diff are read-only properties (updates must be in place)."""

    def __init__(self, data, diff, lr_mult=1.0, decay_mult=1.0):
        self._data, self._diff, self.lr_mult, self.decay_mult = data, diff, lr_mult, decay_mult

    data = property(lambda self: self._data)
    diff = property(lambda self: self._diff)


def _params(rng):
    return [P(rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)),
            P(rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32), 2.0, 0.0)]


def _solver(**kw):
    return caffe_pb2.SolverParameter(base_lr=0.1, **kw)


def test_sgd_momentum_weight_decay_two_steps():
    rng = np.random.default_rng(0)
    params = _params(rng)
    ref = [(p.data.astype(np.float64), np.zeros(p.data.shape)) for p in params]
    rule = make_rule(_solver(momentum=0.9, weight_decay=0.01), params)
    for step in range(2):
        grads = [rng.standard_normal(p.data.shape).astype(np.float32) for p in params]
        for p, g in zip(params, grads):
            p.diff[...] = g
        rule.apply(0.1, step)
        new = []
        for (w, v), g, p in zip(ref, grads, params):
            g = g + 0.01 * p.decay_mult * w
            v = 0.9 * v + 0.1 * p.lr_mult * g
            new.append((w - v, v))
        ref = new
    for p, (w, v), h in zip(params, ref, rule.history):
        np.testing.assert_allclose(p.data, w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h, v, rtol=1e-5, atol=1e-6)


def test_l1_regularization_adds_sign():
    params = [P(np.array([2.0, -3.0, 0.0], np.float32), np.zeros(3, np.float32))]
    rule = make_rule(_solver(weight_decay=0.5, regularization_type="L1"), params)
    rule.apply(1.0, 0)
    np.testing.assert_allclose(params[0].data, [1.5, -2.5, 0.0])


def test_nesterov_step():
    w = np.array([1.0, 2.0], np.float32)
    params = [P(w.copy(), np.array([0.5, -1.0], np.float32))]
    rule = make_rule(_solver(type="Nesterov", momentum=0.9), params)
    rule.history[0][...] = [0.1, 0.2]
    rule.apply(0.1, 0)
    v_prev = np.array([0.1, 0.2])
    v = 0.9 * v_prev + 0.1 * np.array([0.5, -1.0])
    update = 1.9 * v - 0.9 * v_prev
    np.testing.assert_allclose(params[0].data, w - update, rtol=1e-6)


def test_adam_matches_caffe_definition_over_three_steps():
    rng = np.random.default_rng(1)
    params = [P(rng.standard_normal(6).astype(np.float32), np.zeros(6, np.float32))]
    rule = make_rule(_solver(type="Adam", momentum=0.9, momentum2=0.999, delta=1e-8), params)
    assert len(rule.history) == 2  # m then v, as Caffe stores them
    w = params[0].data.astype(np.float64)
    m = np.zeros(6)
    v = np.zeros(6)
    for t in range(3):
        g = rng.standard_normal(6).astype(np.float32)
        params[0].diff[...] = g
        rule.apply(0.001, t)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        corr = math.sqrt(1 - 0.999 ** (t + 1)) / (1 - 0.9 ** (t + 1))
        w = w - 0.001 * corr * m / (np.sqrt(v) + 1e-8)
    np.testing.assert_allclose(params[0].data, w, rtol=1e-4, atol=1e-6)


def test_lr_mult_zero_is_bit_identical_even_with_decay_and_momentum():
    rng = np.random.default_rng(2)
    frozen = P(rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32), 0.0, 1.0)
    before = frozen.data.copy()
    rule = make_rule(_solver(momentum=0.9, weight_decay=0.1, clip_gradients=0.5), [frozen])
    for t in range(3):
        frozen.diff[...] = rng.standard_normal(4)
        rule.apply(0.5, t)
    assert frozen.data.tobytes() == before.tobytes()


def test_iter_size_divides_and_clip_rescales():
    params = [P(np.zeros(2, np.float32), np.array([6.0, 8.0], np.float32))]
    rule = make_rule(_solver(iter_size=2, clip_gradients=5.0), params)
    rule.apply(1.0, 0)
    # norm 10 > 5 -> [3, 4]; then / iter_size 2 -> [1.5, 2]; w = -lr * g
    np.testing.assert_allclose(params[0].data, [-1.5, -2.0])


def test_adagrad_rmsprop_adadelta_first_step():
    g = np.array([0.5, -2.0], np.float32)
    for kind, expect in [
        ("AdaGrad", -0.1 * g / (np.abs(g) + 1e-8)),
        ("RMSProp", -0.1 * g / (np.sqrt(0.01 * g * g) + 1e-8)),
    ]:
        params = [P(np.zeros(2, np.float32), g.copy())]
        make_rule(_solver(type=kind), params).apply(0.1, 0)
        np.testing.assert_allclose(params[0].data, expect, rtol=1e-5)
    params = [P(np.zeros(2, np.float32), g.copy())]
    make_rule(_solver(type="AdaDelta", momentum=0.95, delta=1e-6), params).apply(1.0, 0)
    g2 = 0.05 * g * g
    expect = -g * np.sqrt(1e-6 / (g2 + 1e-6))
    np.testing.assert_allclose(params[0].data, expect, rtol=1e-4)


def test_solver_type_from_legacy_enum_and_unknown():
    assert solver_type_name(caffe_pb2.SolverParameter(solver_type=caffe_pb2.SolverParameter.NESTEROV)) == "Nesterov"
    assert solver_type_name(caffe_pb2.SolverParameter(type="adam")) == "Adam"
    with pytest.raises(ConfigError, match="unknown type"):
        solver_type_name(caffe_pb2.SolverParameter(type="LBFGS"))


# ------------------------------------------- the compiled update steps (numba) ----

RULE_FIELDS = {"SGD": {"momentum": 0.9}, "Nesterov": {"momentum": 0.95}, "AdaGrad": {"delta": 1e-6},
               "RMSProp": {"rms_decay": 0.98, "delta": 1e-6}, "AdaDelta": {"momentum": 0.95, "delta": 1e-6},
               "Adam": {"momentum": 0.9, "momentum2": 0.999, "delta": 1e-8}}


def _update_run(rule_type: str, compiled: bool, dtype=np.float32, regularization="L2", steps=3):
    """Three steps of a rule over blobs holding every awkward value; (data, diff, history...) after each."""
    from trainer import kernels
    rng = np.random.default_rng(11)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3e38], dtype)
    shapes = [(7, 300), (1000,), (5,)]  # the first has a long loop; 5 is shorter than a vector
    params = []
    for k, shape in enumerate(shapes):
        data = rng.standard_normal(shape).astype(dtype)
        data.reshape(-1)[:8] = special[:data.size]
        params.append(P(data, np.zeros(shape, dtype), lr_mult=(1.0, 2.0, 0.5)[k], decay_mult=(1.0, 0.0, 3.0)[k]))
    prev = kernels.use_compiled(compiled)
    try:
        rule = make_rule(_solver(type=rule_type, weight_decay=0.0005, regularization_type=regularization,
                                 **RULE_FIELDS[rule_type]), params)
        out = []
        grads = np.random.default_rng(12)
        for step in range(steps):
            for p in params:
                p.diff[...] = grads.standard_normal(p.diff.shape).astype(dtype) * np.asarray(0.01, dtype)
                p.diff.reshape(-1)[-8:] = special[-p.diff.size:]  # gradients that are zero of either sign, inf, NaN, tiny
            with np.errstate(all="ignore"):  # the inf and NaN put in on purpose
                rule.apply(0.01 * (1 + step), step)
            out.append([a.copy() for p in params for a in (p.data, p.diff)] + [h.copy() for h in rule.history])
        return out
    finally:
        kernels.use_compiled(prev)


def _bits_equal(a, b):
    nan = np.isnan(a)
    return np.array_equal(nan, np.isnan(b)) and np.where(nan, 0, a).tobytes() == np.where(nan, 0, b).tobytes()


def _needs_compiled():
    from trainer import kernels
    if not kernels.compiled_available():
        pytest.skip("numba is not importable (or DATAKIT_COMPILED=0): only the NumPy lines run")


@pytest.mark.parametrize("rule_type", list(RULE_FIELDS))
def test_compiled_update_step_gives_the_numpy_lines_bits(rule_type):
    """Weight decay (per-blob decay_mult, 0 included), the rule and the subtraction: data, the update
    left in diff (what snapshot_diff writes) and every history set agree bit for bit, signed zeros,
    infinities and NaN too, over three steps (Adam's bias correction changes with each)."""
    _needs_compiled()
    compiled, plain = _update_run(rule_type, True), _update_run(rule_type, False)
    for step, (a, b) in enumerate(zip(compiled, plain)):
        for k, (x, y) in enumerate(zip(a, b)):
            with np.errstate(all="ignore"):
                assert _bits_equal(x, y), f"step {step}, array {k}: max difference {np.nanmax(np.abs(x - y))}"


def test_compiled_update_step_takes_only_what_it_computes(monkeypatch):
    """Every rule runs its compiled loop on float32 with L2 decay; L1 decay and float64 blobs keep the
    NumPy lines (the loops are L2 and float32 only)."""
    _needs_compiled()
    from trainer import kernels_cpu
    calls = []
    real = kernels_cpu.kernel

    def spy(name):
        calls.append(name)
        return real(name)
    monkeypatch.setattr(kernels_cpu, "kernel", spy)
    for rule_type in RULE_FIELDS:
        _update_run(rule_type, True, steps=1)
    assert calls == [s for s in kernels_cpu.UPDATE_STEPS for _ in range(3)]
    calls.clear()
    _update_run("SGD", True, regularization="L1", steps=1)
    _update_run("Adam", True, dtype=np.float64, steps=1)
    assert calls == []

    from trainer.updates import UpdateRule

    class HalfSGD(UpdateRule):  # a rule of one's own: its compute_update must run, not the SGD loop
        def compute_update(self, i, rate, it):
            super().compute_update(i, rate * 0.5, it)
    blob = P(np.ones(4, np.float32), np.ones(4, np.float32))
    HalfSGD([blob], momentum=0.9).apply(1.0, 0)
    assert calls == [] and np.array_equal(blob.data, np.full(4, 0.5, np.float32))


def test_clip_gradients_uses_one_norm_over_every_blob():
    """Caffe's ClipGradients: the L2 norm of all diffs together (here 5) against clip_gradients (2.5),
    one factor (0.5) for every blob. Clipping each blob by its own norm gives [2.5] and [2.5]."""
    params = [P(np.zeros(1, np.float32), np.array([3.0], np.float32)),
              P(np.zeros(1, np.float32), np.array([4.0], np.float32))]
    make_rule(_solver(clip_gradients=2.5), params).apply(1.0, 0)
    np.testing.assert_allclose([params[0].data[0], params[1].data[0]], [-1.5, -2.0], rtol=1e-6)
    params = [P(np.zeros(1, np.float32), np.array([3.0], np.float32)),
              P(np.zeros(1, np.float32), np.array([4.0], np.float32))]
    make_rule(_solver(clip_gradients=5.0), params).apply(1.0, 0)  # norm 5 is not above 5: untouched
    np.testing.assert_allclose([params[0].data[0], params[1].data[0]], [-3.0, -4.0])


@pytest.mark.parametrize("regularization,decay_term", [("L2", 0.1 * 2 * 4.0), ("L1", 0.1 * 2 * 1.0)])
def test_weight_decay_is_added_after_the_iter_size_division_with_decay_mult(regularization, decay_term):
    """Normalize, then Regularize: g = diff / iter_size + weight_decay * decay_mult * (w or sign w).
    Decay added before the division would be halved; a missing decay_mult would halve it too."""
    params = [P(np.array([4.0], np.float32), np.array([6.0], np.float32), 1.0, 2.0)]
    make_rule(_solver(iter_size=2, weight_decay=0.1, regularization_type=regularization), params).apply(0.5, 0)
    np.testing.assert_allclose(params[0].data, [4.0 - 0.5 * (3.0 + decay_term)], rtol=1e-6)


def test_sgd_uses_lr_mult_and_momentum_history_as_caffe():
    """v = momentum * v + lr * lr_mult * g; w -= v (Caffe's history is the step itself, lr inside it)."""
    params = [P(np.array([1.0], np.float32), np.array([2.0], np.float32), 3.0, 0.0)]
    rule = make_rule(_solver(momentum=0.5), params)
    rule.apply(0.1, 0)                       # v = 0.6
    params[0].diff[...] = 1.0
    rule.apply(0.01, 1)                      # v = 0.3 + 0.03 = 0.33: the old step decays at the new rate's scale
    np.testing.assert_allclose(rule.history[0], [0.33], rtol=1e-6)
    np.testing.assert_allclose(params[0].data, [1.0 - 0.6 - 0.33], rtol=1e-6)
