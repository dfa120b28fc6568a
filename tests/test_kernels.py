"""Device kernels: the NumPy twins against Caffe's per-pixel loops, and CuPy against NumPy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from trainer import backend, kernels, kernels_dispatch  # the thread-split knobs live in kernels_dispatch

CASES = [  # kh, kw, ph, pw, sh, sw
    (3, 3, 0, 0, 2, 2), (3, 3, 1, 1, 2, 2), (2, 3, 1, 0, 1, 2), (3, 3, 1, 1, 1, 1), (2, 2, 0, 0, 2, 2),
]


def ref_im2col(x, kh, kw, ph, pw, sh, sw, dh=1, dw=1):
    n, c, h, w = x.shape
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    col = np.zeros((c, kh, kw, n, oh, ow), x.dtype)
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                for ni in range(n):
                    for oy in range(oh):
                        for ox in range(ow):
                            y, xx = oy * sh - ph + i * dh, ox * sw - pw + j * dw
                            if 0 <= y < h and 0 <= xx < w:
                                col[ci, i, j, ni, oy, ox] = x[ni, ci, y, xx]
    return col.reshape(c * kh * kw, n * oh * ow)


def ref_pool(x, kh, kw, ph, pw, sh, sw, method):
    """Caffe's pooling_layer.cpp loops (MAX with window-local argmax, AVE with its divisor)."""
    n, c, h, w = x.shape
    oh = kernels.pool_out_size(h, kh, ph, sh)
    ow = kernels.pool_out_size(w, kw, pw, sw)
    y = np.zeros((n, c, oh, ow), x.dtype)
    arg = np.zeros((n, c, oh, ow), np.int32)
    for ni in range(n):
        for ci in range(c):
            for py in range(oh):
                for px in range(ow):
                    hs, ws = py * sh - ph, px * sw - pw
                    if method == "max":
                        he, we = min(hs + kh, h), min(ws + kw, w)
                        best, besti = -np.inf, 0
                        for yy in range(max(hs, 0), he):
                            for xx in range(max(ws, 0), we):
                                if x[ni, ci, yy, xx] > best:
                                    best, besti = x[ni, ci, yy, xx], (yy - hs) * kw + (xx - ws)
                        y[ni, ci, py, px], arg[ni, ci, py, px] = best, besti
                    else:
                        he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                        size = (he - hs) * (we - ws)
                        hs2, ws2, he2, we2 = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                        y[ni, ci, py, px] = x[ni, ci, hs2:he2, ws2:we2].sum() / size
    return y, arg


@pytest.mark.parametrize("channels", [3, 9])  # im2col splits by (channel, kernel row) below 4 channels a core
@pytest.mark.parametrize("case", CASES)
def test_im2col_matches_loop_and_col2im_is_its_adjoint(case, channels):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, channels, 6, 7))
    col = kernels.im2col(x, *case)
    np.testing.assert_array_equal(col, ref_im2col(x, *case))
    c = rng.standard_normal(col.shape)
    back = kernels.col2im(c, x.shape, *case)
    assert np.vdot(col, c) == pytest.approx(np.vdot(x, back))


def test_im2col_dilation():
    x = np.random.default_rng(1).standard_normal((1, 2, 7, 7))
    np.testing.assert_array_equal(kernels.im2col(x, 3, 3, 2, 2, 1, 1, 2, 2),
                                  ref_im2col(x, 3, 3, 2, 2, 1, 1, 2, 2))


@pytest.mark.parametrize("case", CASES)
def test_pooling_matches_caffe_loops(case):
    x = np.random.default_rng(2).standard_normal((2, 2, 7, 6))
    kh, kw, ph, pw, sh, sw = case
    oh = kernels.pool_out_size(7, kh, ph, sh)
    ow = kernels.pool_out_size(6, kw, pw, sw)
    y, arg = kernels.max_pool_forward(x, kh, kw, ph, pw, sh, sw, oh, ow)
    ry, rarg = ref_pool(x, *case, "max")
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(arg, rarg)
    ya = kernels.ave_pool_forward(x, kh, kw, ph, pw, sh, sw, oh, ow)
    np.testing.assert_allclose(ya, ref_pool(x, *case, "ave")[0], rtol=1e-12)


def test_lrn_window_sum_at_channel_edges():
    x = np.random.default_rng(3).standard_normal((1, 6, 2, 2))
    y, scale = kernels.lrn_across_forward(x, 5, 1e-1, 0.75, 1.0)
    for c in range(6):
        s = 1.0 + 0.1 / 5 * (x[0, max(0, c - 2):c + 3] ** 2).sum(axis=0)
        np.testing.assert_allclose(scale[0, c], s)
        np.testing.assert_allclose(y[0, c], x[0, c] * s ** -0.75)


@pytest.mark.parametrize("compiled", [True, False])
def test_lrn_backward_with_the_forwards_power_gives_the_same_bits(compiled):
    """The LRN layer hands the forward's scale^-β to its backward instead of computing it again."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 7, 5, 4)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    prev = kernels.use_compiled(compiled)
    try:
        y, scale, spow = kernels.lrn_across_forward_keep(x, 5, 0.1, 0.75, 2.0)
        y2, scale2 = kernels.lrn_across_forward(x, 5, 0.1, 0.75, 2.0)
        kept = kernels.lrn_across_backward(x, y, scale, dy, 5, 0.1, 0.75, spow=spow)
        again = kernels.lrn_across_backward(x, y, scale, dy, 5, 0.1, 0.75)
    finally:
        kernels.use_compiled(prev)
    assert np.array_equal(spow, np.power(scale, np.float32(-0.75)))
    for a, b in ((y, y2), (scale, scale2), (kept, again)):
        assert a.tobytes() == b.tobytes()


# ------------------------------------------------------------- CuPy twins ----

needs_gpu = pytest.mark.skipif(not backend.gpu_available(),
                               reason=f"CuPy kernels need a GPU: {backend.gpu_unavailable_reason()}")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_cupy_kernels_agree_with_numpy(case, dtype):
    cp = backend.cupy_module()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    kh, kw, ph, pw, sh, sw = case
    gx = cp.asarray(x)
    col = kernels.im2col(x, *case)
    gcol = kernels.im2col(gx, *case)
    np.testing.assert_array_equal(cp.asnumpy(gcol), col)
    c = rng.standard_normal(col.shape).astype(dtype)
    np.testing.assert_allclose(cp.asnumpy(kernels.col2im(cp.asarray(c), x.shape, *case)),
                               kernels.col2im(c, x.shape, *case), rtol=1e-5, atol=1e-5)
    oh = kernels.pool_out_size(9, kh, ph, sh)
    ow = kernels.pool_out_size(8, kw, pw, sw)
    y, arg = kernels.max_pool_forward(x, kh, kw, ph, pw, sh, sw, oh, ow)
    gy, garg = kernels.max_pool_forward(gx, kh, kw, ph, pw, sh, sw, oh, ow)
    np.testing.assert_array_equal(cp.asnumpy(gy), y)
    np.testing.assert_array_equal(cp.asnumpy(garg), arg)
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(
        cp.asnumpy(kernels.max_pool_backward(cp.asarray(dy), garg, x.shape, kh, kw, ph, pw, sh, sw)),
        kernels.max_pool_backward(dy, arg, x.shape, kh, kw, ph, pw, sh, sw), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cp.asnumpy(kernels.ave_pool_forward(gx, kh, kw, ph, pw, sh, sw, oh, ow)),
                               kernels.ave_pool_forward(x, kh, kw, ph, pw, sh, sw, oh, ow), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        cp.asnumpy(kernels.ave_pool_backward(cp.asarray(dy), x.shape, kh, kw, ph, pw, sh, sw)),
        kernels.ave_pool_backward(dy, x.shape, kh, kw, ph, pw, sh, sw), rtol=1e-5, atol=1e-6)
    y, scale = kernels.lrn_across_forward(x, 5, 1e-1, 0.75, 1.0)
    gy, gscale = kernels.lrn_across_forward(gx, 5, 1e-1, 0.75, 1.0)
    np.testing.assert_allclose(cp.asnumpy(gy), y, rtol=1e-5, atol=1e-6)
    dyl = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_allclose(
        cp.asnumpy(kernels.lrn_across_backward(gx, gy, gscale, cp.asarray(dyl), 5, 1e-1, 0.75)),
        kernels.lrn_across_backward(x, y, scale, dyl, 5, 1e-1, 0.75), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@needs_gpu
def test_net_on_gpu_matches_cpu():
    from google.protobuf import text_format

    from datakit.formats import caffe_pb2
    from trainer.net import Net
    cp = backend.cupy_module()
    text = '''
    layer { name: "in" type: "Input" top: "data" top: "label" input_param { shape { dim: 4 dim: 3 dim: 12 dim: 12 } shape { dim: 4 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 6 kernel_size: 3 group: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
    layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { kernel_size: 3 stride: 2 } }
    layer { name: "norm" type: "LRN" bottom: "pool" top: "norm" }
    layer { name: "ip" type: "InnerProduct" bottom: "norm" top: "ip" inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    '''
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    nets = [Net(param, caffe_pb2.TRAIN, xp=xp, seed=0, dtype=np.float64) for xp in (np, cp)]
    rng = np.random.default_rng(0)
    x, lab = rng.standard_normal((4, 3, 12, 12)), np.array([0, 1, 2, 4.0])
    losses = []
    for net in nets:
        net.blobs["data"].data[...] = net.xp.asarray(x)
        net.blobs["label"].data[...] = net.xp.asarray(lab)
        losses.append(net.forward_backward())
    assert losses[0] == pytest.approx(losses[1], rel=1e-10)
    for a, b in zip(nets[0].learnable_params, nets[1].learnable_params):
        np.testing.assert_allclose(cp.asnumpy(b.diff), a.diff, rtol=1e-8, atol=1e-10)


def test_threaded_split_gives_the_same_results(monkeypatch):
    """Force the multi-thread path (chunks over channels / images) on small arrays."""
    monkeypatch.setattr(kernels_dispatch, "_MIN_SPLIT", 1)
    monkeypatch.setattr(kernels_dispatch, "_WORKERS", 3)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 5, 7, 6))
    case = (3, 3, 1, 1, 2, 2)
    col = kernels.im2col(x, *case)
    np.testing.assert_array_equal(col, ref_im2col(x, *case))
    c = rng.standard_normal(col.shape)
    assert np.vdot(col, c) == pytest.approx(np.vdot(x, kernels.col2im(c, x.shape, *case)))
    oh, ow = kernels.pool_out_size(7, 3, 1, 2), kernels.pool_out_size(6, 3, 1, 2)
    y, arg = kernels.max_pool_forward(x, 3, 3, 1, 1, 2, 2, oh, ow)
    ry, rarg = ref_pool(x, *case, "max")
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(arg, rarg)
    dy = rng.standard_normal(y.shape)
    monkeypatch.setattr(kernels_dispatch, "_MIN_SPLIT", 1 << 60)
    single = kernels.max_pool_backward(dy, arg, x.shape, 3, 3, 1, 1, 2, 2)
    monkeypatch.setattr(kernels_dispatch, "_MIN_SPLIT", 1)
    np.testing.assert_array_equal(kernels.max_pool_backward(dy, arg, x.shape, 3, 3, 1, 1, 2, 2), single)


# ------------------------------------------------ compiled CPU kernels (numba) ----

needs_compiled = pytest.mark.skipif(not kernels.compiled_available(),
                                    reason="numba is not importable (or DATAKIT_COMPILED=0): only the NumPy twins run")


@pytest.fixture
def numpy_twins():
    """Run the NumPy twins (the fallback when numba is missing) instead of the compiled kernels."""
    prev = kernels.use_compiled(False)
    yield
    kernels.use_compiled(prev)


@pytest.mark.parametrize("case", CASES)
def test_numpy_twins_match_caffe_loops(case, numpy_twins):
    assert not kernels.compiled_available()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 7, 6))
    kh, kw, ph, pw, sh, sw = case
    oh, ow = kernels.pool_out_size(7, kh, ph, sh), kernels.pool_out_size(6, kw, pw, sw)
    y, arg = kernels.max_pool_forward(x, kh, kw, ph, pw, sh, sw, oh, ow)
    ry, rarg = ref_pool(x, *case, "max")
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(arg, rarg)
    np.testing.assert_allclose(kernels.ave_pool_forward(x, kh, kw, ph, pw, sh, sw, oh, ow),
                               ref_pool(x, *case, "ave")[0], rtol=1e-12)
    col = kernels.im2col(x, *case)
    c = rng.standard_normal(col.shape)
    assert np.vdot(col, c) == pytest.approx(np.vdot(x, kernels.col2im(c, x.shape, *case)))


def _same_bits(a, b, what):
    """Equal bit for bit, NaN payloads aside (a NaN only has to be a NaN on both sides)."""
    assert a.shape == b.shape and a.dtype == b.dtype, what
    if a.dtype.kind == "f":
        nan = np.isnan(a)
        np.testing.assert_array_equal(nan, np.isnan(b), err_msg=what)
        a, b = np.where(nan, 0, a), np.where(nan, 0, b)
    assert a.tobytes() == b.tobytes(), f"{what}: max difference {np.abs(a - b).max()}"


def _both(fn):
    outs = []
    for on in (True, False):
        prev = kernels.use_compiled(on)
        try:
            out = fn()
        finally:
            kernels.use_compiled(prev)
        outs.append(out if isinstance(out, tuple) else (out,))
    return outs


@needs_compiled
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("plane", [(9, 8), (12, 13)])
@pytest.mark.parametrize("case", CASES + [(5, 5, 2, 2, 3, 3), (3, 3, 0, 0, 1, 1), (2, 2, 1, 1, 2, 2),
                                          (2, 2, 0, 0, 1, 1), (2, 2, 1, 1, 3, 3), (3, 3, 1, 1, 3, 3)])
def test_compiled_kernels_give_the_numpy_twins_bits(case, dtype, plane):
    """Same bits as the NumPy twins, signed zeros, NaN and ties included (the sums run in the same order).

    The planes give the 2x2 and 3x3 max pooling both its inner-window loop and its edge windows;
    the strides give those loops each of their three forms (stride 1, stride 2, any other)."""
    rng = np.random.default_rng(6)
    kh, kw, ph, pw, sh, sw = case
    ih, iw = plane
    x = rng.standard_normal((2, 5, ih, iw)).astype(dtype)
    x[0, 0, 0, :3] = -0.0
    x[1, 1, 2, 2] = np.nan
    x[1, 2, :4, :] = np.nan   # windows of NaN only
    x[0, 3] = np.round(x[0, 3]) + 0.0  # ties (no -0.0: the twin's fmax may return either zero)
    oh, ow = kernels.pool_out_size(ih, kh, ph, sh), kernels.pool_out_size(iw, kw, pw, sw)
    geo = (kh, kw, ph, pw, sh, sw)
    y, arg = kernels.max_pool_forward(x, *geo, oh, ow)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy[0, 0, 0, 0] = -0.0
    checks = {
        "max forward": lambda: kernels.max_pool_forward(x, *geo, oh, ow),
        "max values": lambda: kernels.max_pool_values(x, *geo, oh, ow),
        "max backward": lambda: kernels.max_pool_backward(dy, arg, x.shape, *geo),
        "ave forward": lambda: kernels.ave_pool_forward(x, *geo, oh, ow),
        "ave backward": lambda: kernels.ave_pool_backward(dy, x.shape, *geo),
    }
    for dil in (1, 2):
        col = kernels.im2col(x, *geo, dil, dil)
        c = rng.standard_normal(col.shape).astype(dtype)
        checks[f"col2im dilation {dil}"] = lambda c=c, dil=dil: kernels.col2im(c, x.shape, *geo, dil, dil)
        checks[f"im2col dilation {dil}"] = lambda dil=dil: kernels.im2col(x, *geo, dil, dil)
    for size in (3, 5):
        xl = rng.standard_normal((2, 7, 3, 4)).astype(dtype)
        xl[0, 0, 0, 0] = -0.0
        yl, scale = kernels.lrn_across_forward(xl, size, 0.1, 0.75, 1.0)
        dyl = rng.standard_normal(xl.shape).astype(dtype)
        dyl[:, :, 0, 0] = -0.0
        checks[f"lrn forward {size}"] = lambda xl=xl, size=size: kernels.lrn_across_forward(xl, size, 0.1, 0.75, 1.0)
        checks[f"lrn backward {size}"] = lambda xl=xl, yl=yl, s=scale, d=dyl, size=size: \
            kernels.lrn_across_backward(xl, yl, s, d, size, 0.1, 0.75)
    for what, fn in checks.items():
        compiled, twin = _both(fn)
        for a, b in zip(compiled, twin):
            _same_bits(a, b, what)


@needs_compiled
def test_compiled_kernels_split_over_threads_give_the_same_bits(monkeypatch):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 6, 11, 10)).astype(np.float32)
    geo = (3, 3, 1, 1, 2, 2)
    oh, ow = kernels.pool_out_size(11, 3, 1, 2), kernels.pool_out_size(10, 3, 1, 2)
    col = rng.standard_normal(kernels.im2col(x, *geo).shape).astype(np.float32)

    def run():
        y, arg = kernels.max_pool_forward(x, *geo, oh, ow)
        return (y, arg, kernels.max_pool_backward(y, arg, x.shape, *geo), kernels.ave_pool_forward(x, *geo, oh, ow),
                kernels.col2im(col, x.shape, *geo), *kernels.lrn_across_forward(x, 5, 0.1, 0.75, 1.0),
                kernels.im2col(x, *geo))
    single = run()
    monkeypatch.setattr(kernels_dispatch, "_MIN_SPLIT", 1)
    monkeypatch.setattr(kernels_dispatch, "_WORKERS", 3)
    for a, b in zip(run(), single):
        _same_bits(a, b, "threaded")


_EXERCISE_KERNELS = """
import json, sys
import numpy as np
from trainer import kernels, kernels_cpu
x = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
y, arg = kernels.max_pool_forward(x, 3, 3, 1, 1, 2, 2, 4, 4)
kernels.max_pool_values(x, 3, 3, 1, 1, 2, 2, 4, 4)
kernels.max_pool_backward(y, arg, x.shape, 3, 3, 1, 1, 2, 2)
kernels.ave_pool_backward(kernels.ave_pool_forward(x, 3, 3, 1, 1, 2, 2, 4, 4), x.shape, 3, 3, 1, 1, 2, 2)
yl, scale = kernels.lrn_across_forward(x, 3, 0.1, 0.75, 1.0)
kernels.lrn_across_backward(x, yl, scale, yl, 3, 0.1, 0.75)
kernels.col2im(kernels.im2col(x, 3, 3, 1, 1, 1, 1), x.shape, 3, 3, 1, 1, 1, 1)
from types import SimpleNamespace
from datakit.formats import caffe_pb2
from trainer.updates import make_rule
for rule in ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"):
    blob = SimpleNamespace(data=x.copy(), diff=x.copy(), lr_mult=1.0, decay_mult=1.0)
    make_rule(caffe_pb2.SolverParameter(type=rule, momentum=0.9, weight_decay=5e-4), [blob]).apply(0.01, 0)
stats = {name: fn.stats for name, fn in vars(kernels_cpu.impl()).items()}
print(json.dumps({name: [sum(s.cache_hits.values()), sum(s.cache_misses.values())] for name, s in stats.items()}))
"""


@needs_compiled
def test_compiled_kernels_load_from_numba_cache_in_a_new_process(tmp_path):
    """A second process finds every kernel in numba's on-disk cache: nothing is compiled at start-up.

    (A kernel that calls another jitted function of the same closure cannot be cached by
    numba, and then every `trainer fit` paid seconds of compilation before its first
    iteration: this is the test that catches it.)"""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "DATAKIT_COMPILED": "1"}
    runs = [subprocess.run([sys.executable, "-c", _EXERCISE_KERNELS], capture_output=True, text=True,
                           env=env, timeout=600, check=True) for _ in range(2)]
    first, second = (json.loads(r.stdout.strip().splitlines()[-1]) for r in runs)
    assert all(misses > 0 for _, misses in first.values()), first   # compiled into the empty cache
    assert second and all(hits > 0 and misses == 0 for hits, misses in second.values()), second


@pytest.mark.parametrize("env,cores,expected", [
    ({}, 2, 1), ({}, 16, 4), ({}, 1, 1), ({"OPENBLAS_NUM_THREADS": "1"}, 2, 2), ({"OMP_NUM_THREADS": "1"}, 16, 8),
    ({"DATAKIT_KERNEL_THREADS": "3"}, 2, 3), ({"DATAKIT_KERNEL_THREADS": "zero"}, 4, 2),
    ({"OPENBLAS_NUM_THREADS": "2"}, 4, 2)])
def test_kernel_threads_leave_the_cores_to_a_multithreaded_blas(monkeypatch, env, cores, expected):
    from trainer import kernels_dispatch
    for var in ("DATAKIT_KERNEL_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert kernels_dispatch._workers_from_env() == expected
