"""trainer.counter_rng and fillers.refill: DummyData's per-forward draw.

The compiled loop and the array twin must give the same bits (so DATAKIT_COMPILED=0, numba's
absence and CuPy all give one stream); the stream must be a correct normal / uniform: checked
against an independent float64 Box-Muller of the same hash bits (a wrong polynomial, quadrant or
exponent fails it) and by distribution tests whose tolerances a broken generator would miss.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from google.protobuf import text_format

from datakit.formats import caffe_pb2
from tests import strict_xp
from trainer import counter_rng, kernels
from trainer.fillers import fill, refill
from trainer.net import Net

needs_compiled = pytest.mark.skipif(not counter_rng.compiled_available(),
                                    reason="numba is missing or DATAKIT_COMPILED=0: no compiled loop to compare")


def twin(fn, out, *args):
    prev = kernels.use_compiled(False)
    try:
        fn(out, *args)
    finally:
        kernels.use_compiled(prev)


def splitmix(seed: int, n_pairs: int) -> np.ndarray:
    """SplitMix64 outputs for pairs 0..n-1, written from its definition (Python ints, mod 2^64)."""
    mask = (1 << 64) - 1
    out = []
    for j in range(n_pairs):
        z = (seed + (j + 1) * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return np.array(out, dtype=np.uint64)


@needs_compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 2, 7, 1000, 300_001])
def test_compiled_loop_and_array_twin_agree_bit_for_bit(dtype, size):
    seed = counter_rng.draw_seed(np.random.default_rng(size))
    for fn, args in ((counter_rng.normal, (0.25, 3.0)), (counter_rng.uniform, (-2.0, 5.0))):
        a, b = np.empty(size, dtype), np.empty(size, dtype)
        fn(a, seed, *args)
        twin(fn, b, seed, *args)
        np.testing.assert_array_equal(a, b, err_msg=f"{fn.__name__} {size} {dtype}")


@needs_compiled
def test_values_depend_on_the_index_only_not_on_the_split():
    """What each thread computes is fixed by the pair index: any chunking gives the same array."""
    impl = counter_rng._impl()
    n, seed = 10_000, np.uint64(2024)
    whole = np.empty(n, np.float32)
    impl.normal_pairs(whole, seed, np.float32(0), np.float32(1), 0, n // 2)
    for cuts in ([0, 1, 2500, 4999, 5000], [0, 1234, 5000], [0, 5000]):
        parts = np.empty(n, np.float32)
        for lo, hi in zip(cuts, cuts[1:]):
            impl.normal_pairs(parts, seed, np.float32(0), np.float32(1), lo, hi)
        np.testing.assert_array_equal(parts, whole)
    threaded = np.empty(n * 64, np.float32)  # large enough for kernels.parallel to split it
    counter_rng.normal(threaded, seed)
    single = np.empty(n * 64, np.float32)
    impl.normal_pairs(single, seed, np.float32(0), np.float32(1), 0, n * 32)
    np.testing.assert_array_equal(threaded, single)


def test_same_seed_same_values_and_seeds_differ():
    a, b, c = (np.empty(999, np.float32) for _ in range(3))
    counter_rng.normal(a, np.uint64(7))
    counter_rng.normal(b, np.uint64(7))
    counter_rng.normal(c, np.uint64(8))
    np.testing.assert_array_equal(a, b)
    assert np.mean(a == c) < 0.01
    # a shorter array is the prefix of a longer one with the same seed (values are per index)
    d = np.empty(500, np.float32)
    counter_rng.normal(d, np.uint64(7))
    np.testing.assert_array_equal(d, a[:500])


def test_a_strided_array_gets_the_values_of_a_dense_one():
    dense, wide = np.empty((6, 5), np.float32), np.zeros((6, 10), np.float32)
    counter_rng.normal(dense, np.uint64(4))
    counter_rng.normal(wide[:, ::2], np.uint64(4))
    np.testing.assert_array_equal(wide[:, ::2], dense)
    assert not wide[:, 1::2].any()


@pytest.mark.parametrize("compiled", [True, False])
def test_normal_is_box_muller_of_the_hash_bits_to_float32_accuracy(compiled):
    """An independent float64 Box-Muller (np.log, np.cos, np.sin) from the SplitMix64 definition."""
    n_pairs, seed = 4000, 123456789
    z = splitmix(seed, n_pairs)
    h = (z >> np.uint64(32)).astype(np.float64)
    u1 = (2.0 * h + 1.0) / 2.0 ** 33
    theta = 2.0 * np.pi * ((z & np.uint64(0xFFFFFFFF)) >> np.uint64(8)).astype(np.float64) / 2.0 ** 24
    r = np.sqrt(-2.0 * np.log(u1))
    ref = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1).reshape(-1)
    out = np.empty(2 * n_pairs, np.float32)
    if compiled:
        counter_rng.normal(out, np.uint64(seed))
    else:
        twin(counter_rng.normal, out, np.uint64(seed))
    # float32 arithmetic on values up to ~5: a few ulps (the mantissa of u1 keeps 24 bits)
    np.testing.assert_allclose(out, ref, rtol=0, atol=4e-6 * np.maximum(1.0, np.abs(ref)).max())
    u = np.empty(2 * n_pairs, np.float32)
    counter_rng.uniform(u, np.uint64(seed))
    uref = np.stack([(z >> np.uint64(40)), (z >> np.uint64(8)) & np.uint64(0xFFFFFF)], axis=1).reshape(-1)
    np.testing.assert_array_equal(u, uref.astype(np.float64) / 2.0 ** 24)


def _ks_normal(x: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance of x from N(0, 1)."""
    x = np.sort(x.astype(np.float64))
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    n = x.size
    return float(max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n)))


def test_normal_distribution_mean_std_tails_and_independence():
    n = 1 << 20
    x = np.empty(n, np.float32)
    counter_rng.normal(x, counter_rng.draw_seed(np.random.default_rng(11)), 2.0, 0.5)
    z = (x.astype(np.float64) - 2.0) / 0.5
    assert abs(z.mean()) < 5 / math.sqrt(n)                   # 5σ bounds: a fair generator passes
    assert abs(z.std() - 1.0) < 5 * math.sqrt(0.5 / n)
    assert abs(np.mean(z ** 3)) < 5 * math.sqrt(15 / n)        # skew
    assert abs(np.mean(z ** 4) - 3.0) < 5 * math.sqrt(96 / n)  # kurtosis
    for k, p in ((1.0, 0.31731), (2.0, 0.04550), (3.0, 0.0026998), (4.0, 6.334e-5)):
        frac = np.mean(np.abs(z) > k)
        assert abs(frac - p) < 5 * math.sqrt(p / n) + 1e-7, (k, frac, p)
    assert np.abs(z).max() < 6.7                               # u1 >= 2^-33
    assert _ks_normal(z[:200_000]) < 1.63 / math.sqrt(200_000)  # KS at the 1 % level
    for lag in (1, 2, 3):                                     # pair members and neighbours independent
        assert abs(np.corrcoef(z[:-lag], z[lag:])[0, 1]) < 5 / math.sqrt(n)
    assert abs(np.corrcoef(z[0::2] ** 2, z[1::2] ** 2)[0, 1]) < 5 / math.sqrt(n / 2)


def test_uniform_distribution_bounds_and_moments():
    n = 1 << 20
    u = np.empty(n, np.float64)
    counter_rng.uniform(u, np.uint64(99), -1.0, 3.0)
    assert u.min() >= -1.0 and u.max() < 3.0
    v = (u + 1.0) / 4.0
    assert abs(v.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(v.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    counts = np.bincount((v * 64).astype(int), minlength=64)
    chi2 = float(((counts - n / 64) ** 2 / (n / 64)).sum())
    assert chi2 < 110  # 63 degrees of freedom: p < 1e-4 above 110
    assert abs(np.corrcoef(v[:-1], v[1:])[0, 1]) < 5 / math.sqrt(n)


def test_refill_on_the_device_gives_the_host_values():
    """On CuPy (strict_xp here) the same lines run on the device: no host draw, no copy, same bits."""
    host = np.empty((3, 5, 7), np.float32)
    with strict_xp.installed() as xp:
        dev = xp.zeros((3, 5, 7), dtype=np.float32)
        for kind in ("gaussian", "uniform", "xavier", "msra", "positive_unitball"):
            f = caffe_pb2.FillerParameter(type=kind, std=0.3, min=-1, max=2)
            refill(host, f, np.random.default_rng(5))
            refill(dev, f, np.random.default_rng(5))
            assert isinstance(dev, strict_xp.DeviceArray)
            tol = {"rtol": 1e-6} if kind == "positive_unitball" else {"rtol": 0, "atol": 0}
            np.testing.assert_allclose(dev.get(), host, err_msg=kind, **tol)


@pytest.mark.parametrize("kind,check", [
    ("gaussian", lambda x: abs(x.mean() - 1.0) < 0.01 and abs(x.std() - 0.5) < 0.01),
    ("uniform", lambda x: x.min() >= -1 and x.max() < 2 and abs(x.mean() - 0.5) < 0.01),
    ("xavier", lambda x: np.abs(x).max() <= math.sqrt(3 / 600) and abs(x.std() - math.sqrt(1 / 600)) < 1e-3),
    ("msra", lambda x: abs(x.std() - math.sqrt(2 / 600)) < 1e-3),
    ("positive_unitball", lambda x: x.min() >= 0 and np.allclose(x.reshape(40, -1).sum(axis=1), 1, rtol=1e-5)),
])
def test_refill_keeps_each_fillers_distribution(kind, check):
    f = caffe_pb2.FillerParameter(type=kind, mean=1.0, std=0.5, min=-1, max=2)
    x = np.zeros((40, 600), np.float32)  # xavier/msra: fan_in = count / shape[0] = 600
    refill(x, f, np.random.default_rng(0))
    assert check(x), kind


def test_refill_sparse_gaussian_keeps_the_expected_share():
    x = np.empty((10, 2000), np.float32)
    refill(x, caffe_pb2.FillerParameter(type="gaussian", std=1.0, sparse=3), np.random.default_rng(0))
    assert abs(np.mean(x != 0) - 0.3) < 0.01


DUMMY = '''
layer { name: "d" type: "DummyData" top: "g" top: "u" top: "c"
  dummy_data_param { shape { dim: 4 dim: 3 dim: 5 dim: 5 } shape { dim: 4 dim: 6 } shape { dim: 2 }
    data_filler { type: "gaussian" std: 2 } data_filler { type: "uniform" min: -1 max: 1 }
    data_filler { type: "constant" value: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "u" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "uniform" } } }
'''


def _net(seed: int = 0) -> Net:
    return Net(text_format.Parse(DUMMY, caffe_pb2.NetParameter()), caffe_pb2.TEST, seed=seed)


def test_dummydata_setup_and_weights_are_what_fill_gives():
    """setup still draws through fill, so the weights after DummyData are the same as before the refill change."""
    net = _net()
    rng = np.random.default_rng(0)
    layer = net.layer("d")
    expected = [fill(t.shape, f, rng).astype(np.float32) for t, f in zip(net.top_vecs[0], layer.fillers)]
    w = fill((3, 6), caffe_pb2.FillerParameter(type="gaussian", std=0.1), rng).astype(np.float32)
    b = fill((3,), caffe_pb2.FillerParameter(type="uniform"), rng).astype(np.float32)
    for t, e in zip(net.top_vecs[0], expected):
        np.testing.assert_array_equal(t.data, e)
    np.testing.assert_array_equal(net.layer("ip").blobs[0].data, w)
    np.testing.assert_array_equal(net.layer("ip").blobs[1].data, b)


def test_dummydata_refills_in_place_repeatably_on_any_path():
    runs = []
    for compiled in (True, False):
        prev = kernels.use_compiled(compiled)
        try:
            net = _net()
            g = net.blobs["g"].data
            outs = []
            for _ in range(3):
                net.forward()
                assert net.blobs["g"].data is g  # the same buffer, redrawn
                outs.append([net.blobs[n].data.copy() for n in ("g", "u", "c")])
            runs.append(outs)
        finally:
            kernels.use_compiled(prev)
    for a, b in zip(*runs):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    first, second = runs[0][0], runs[0][1]
    assert not np.array_equal(first[0], second[0]) and not np.array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[2], np.full(2, 3.0, np.float32))
    assert abs(np.concatenate([o[0].ravel() for o in runs[0]]).std() - 2.0) < 0.3
