"""The trainer's CuPy code path, run on a CPU through tests/strict_xp.py (CuPy's rules over NumPy).

No GPU runs these tests, so the CuPy half of the trainer's one code path would otherwise never run
before it meets a GPU. Each test runs the same work twice, with the same seed: on NumPy, and with
``strict_xp`` installed as the trainer's CuPy (``backend.select("gpu")``, ``get_array_module``,
``to_host`` and the RawKernel launches all go through it). The strict run fails on any operation
CuPy would refuse (host and device arrays mixed, NumPy conversions of device arrays, names CuPy
lacks, kernel arguments that do not match the CUDA signature), and its results must equal the
NumPy run's to float tolerance. ``strict_xp``'s docstring lists what it checks and what it cannot.
"""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from datakit.formats import caffe_pb2
from datakit.formats.blobproto import write_mean
from datakit.formats.caffemodel import caffemodel_blobs, read_caffemodel
from tests import strict_xp
from tests.test_data_layers import data_text, make_lmdb
from tests.test_fit import project  # noqa: F401  (fixture: a tiny LMDB project in tmp_path)
from tests.test_net import net_param
from tests.test_rails import NET as RAILS_NET
from tests.test_updates import P
from trainer import kernels_cuda, rails
from trainer.classify import Classifier
from trainer.evaluate import score_net
from trainer.fit import FitOptions, fit
from trainer.net import Net
from trainer.snapshot import read_solverstate
from trainer.timing import time_net
from trainer.updates import make_rule
from trainer.weights import load_weights

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def host(a: Any) -> np.ndarray:
    """A host copy of a device or host array (a copy: layers rewrite their top buffers in place)."""
    return np.array(strict_xp.asnumpy(a))


@pytest.fixture
def dev() -> Iterator[Any]:
    """strict_xp installed as the trainer's CuPy for one test."""
    strict_xp.launches.clear()
    with strict_xp.installed() as xp:
        yield xp


def tolerance(dtype: Any) -> dict[str, float]:
    return {"rtol": 1e-5, "atol": 1e-6} if np.dtype(dtype) == np.float32 else {"rtol": 1e-10, "atol": 1e-12}


# ------------------------------------------------------------ the shim itself ----

def test_strict_module_refuses_what_cupy_refuses_and_allows_what_it_allows():
    d = strict_xp.arange(6, dtype=np.float32).reshape(2, 3)
    h = np.ones((2, 3), np.float32)

    def assign_device_into_host() -> None:
        h[...] = d

    def add_host_in_place() -> None:
        d2 = d.copy()
        d2 += h
    refused: list[Callable[[], Any]] = [
        lambda: np.asarray(d), lambda: np.array(d), lambda: np.ascontiguousarray(d), lambda: np.float32(d.sum()),
        lambda: d + h, lambda: h * d, lambda: np.concatenate([d, h]), lambda: strict_xp.maximum(h, 0),
        assign_device_into_host, add_host_in_place,
        lambda: [10, 20, 30][d[0, 1].astype(np.int64)],   # no __index__: a device value is no list index
        lambda: float(d[0, 1:2]),                          # CuPy >= 12.3: only 0-d arrays convert to float
    ]
    for bad in refused:
        with pytest.raises(TypeError):
            bad()
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        d[...] = h
    with pytest.raises(ValueError, match="more than one element"):
        bool(d > 1)
    with pytest.raises(AttributeError, match="busday_count"):
        strict_xp.busday_count  # noqa: B018  (a NumPy function CuPy does not have)
    with pytest.raises(AttributeError, match="byteswap"):
        d.byteswap  # noqa: B018
    with pytest.raises(ValueError, match="stabl"):
        strict_xp.argsort(d, kind="quicksort")
    # What CuPy allows stays allowed: NumPy ufuncs dispatch to the device, scalars mix freely,
    # one-element arrays convert explicitly, host indices are converted.
    assert isinstance(np.exp(d), strict_xp.DeviceArray) and isinstance(np.float32(2) * d, strict_xp.DeviceArray)
    assert isinstance(d.sum(), strict_xp.DeviceArray) and float(d.sum()) == 15.0
    np.testing.assert_array_equal(host(d[np.array([1, 0])]), [[3, 4, 5], [0, 1, 2]])
    np.testing.assert_array_equal(d.get(), np.arange(6).reshape(2, 3))


def test_kernel_launches_are_checked_against_the_cuda_signature():
    kernel = strict_xp.RawModule(code=kernels_cuda.module_source("float32")).get_function("ave_pool_fwd")
    x = strict_xp.asarray(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
    y = strict_xp.zeros((1, 1, 2, 2), np.float32)
    sizes = tuple(np.int32(v) for v in (4, 4, 2, 2, 0, 0, 2, 2, 2, 2))  # H W kh kw ph pw sh sw oh ow
    kernel((1,), (32,), (x, y, np.int64(4)) + sizes)
    np.testing.assert_allclose(host(y)[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    for args, match in [((x.get(), y, np.int64(4)) + sizes, "Unsupported type"),        # host buffer
                        ((x.astype(np.float64), y, np.int64(4)) + sizes, "float32"),    # wrong element type
                        ((x, y, np.int64(4), 4) + sizes[1:], "int32"),                  # Python int for int
                        ((x, y, np.int64(4)) + sizes[1:], "takes 13 arguments")]:
        with pytest.raises(TypeError, match=match):
            kernel((1,), (32,), args)
    with pytest.raises(ValueError, match="block"):
        kernel((1,), (2048,), (x, y, np.int64(4)) + sizes)


# ------------------------------------------------------------------ the nets ----

ZOO = '''
force_backward: true
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 4 dim: 7 dim: 7 } shape { dim: 2 } } }
layer { name: "noise" type: "DummyData" top: "noise"
  dummy_data_param { shape { dim: 2 dim: 6 } data_filler { type: "gaussian" std: 0.5 } } }
layer { name: "conv_g" type: "Convolution" bottom: "data" top: "conv_g" convolution_param { num_output: 4
  kernel_size: 3 pad: 1 group: 2 weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "conv_g" top: "conv_g" }
layer { name: "conv_d" type: "Convolution" bottom: "data" top: "conv_d" convolution_param { num_output: 4
  kernel_size: 3 dilation: 2 pad: 2 stride: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "leaky" type: "ReLU" bottom: "conv_d" top: "conv_d" relu_param { negative_slope: 0.1 } }
layer { name: "pool_max" type: "Pooling" bottom: "conv_g" top: "pool_max" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "pool_ave" type: "Pooling" bottom: "conv_g" top: "pool_ave" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "lrn_across" type: "LRN" bottom: "pool_max" top: "lrn_across" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "lrn_within" type: "LRN" bottom: "pool_ave" top: "lrn_within" lrn_param { local_size: 3 alpha: 0.5 norm_region: WITHIN_CHANNEL } }
layer { name: "sum" type: "Eltwise" bottom: "lrn_within" bottom: "conv_d" top: "sum" eltwise_param { operation: SUM coeff: 0.5 coeff: -1 } }
layer { name: "prod" type: "Eltwise" bottom: "lrn_within" bottom: "conv_d" top: "prod" eltwise_param { operation: PROD } }
layer { name: "emax" type: "Eltwise" bottom: "lrn_within" bottom: "conv_d" top: "emax" eltwise_param { operation: MAX } }
layer { name: "gave" type: "Pooling" bottom: "emax" top: "gave" pooling_param { pool: AVE global_pooling: true } }
layer { name: "gmax" type: "Pooling" bottom: "prod" top: "gmax" pooling_param { pool: MAX global_pooling: true } }
layer { name: "sigmoid" type: "Sigmoid" bottom: "sum" top: "sigmoid" }
layer { name: "tanh" type: "TanH" bottom: "lrn_across" top: "tanh" }
layer { name: "flat" type: "Flatten" bottom: "sigmoid" top: "flat" }
layer { name: "reshape" type: "Reshape" bottom: "tanh" top: "reshaped" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "flat_ave" type: "Flatten" bottom: "gave" top: "flat_ave" }
layer { name: "flat_max" type: "Flatten" bottom: "gmax" top: "flat_max" }
layer { name: "cat" type: "Concat" bottom: "flat" bottom: "reshaped" bottom: "flat_ave" bottom: "flat_max"
  bottom: "noise" top: "cat" }
layer { name: "drop" type: "Dropout" bottom: "cat" top: "cat" dropout_param { dropout_ratio: 0.3 } include { phase: TEST } }
layer { name: "split" type: "Split" bottom: "cat" top: "cat_a" top: "cat_b" }
layer { name: "ip" type: "InnerProduct" bottom: "cat_a" top: "ip" inner_product_param { num_output: 5
  weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" } } }
layer { name: "ip_t" type: "InnerProduct" bottom: "cat_b" top: "ip_t" inner_product_param { num_output: 5
  transpose: true weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "scores" type: "Eltwise" bottom: "ip" bottom: "ip_t" top: "scores" }
layer { name: "prob" type: "Softmax" bottom: "scores" top: "prob" loss_weight: 0.3 }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "scores" bottom: "label" top: "loss" loss_param { ignore_label: 4 } }
layer { name: "acc" type: "Accuracy" bottom: "scores" bottom: "label" top: "acc" accuracy_param { top_k: 2 } }
layer { name: "acc_per_class" type: "Accuracy" bottom: "scores" bottom: "label" top: "acc1" top: "per_class" }
'''

# More of the trainer's layers (not Caffe's core zoo), cheap to run the same way.
EXTRAS = '''
force_backward: true
layer { name: "in" type: "Input" top: "data" top: "target"
  input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }
layer { name: "scale" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true
  filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "prelu" type: "PReLU" bottom: "bn" top: "prelu" }
layer { name: "up" type: "Deconvolution" bottom: "prelu" top: "up" convolution_param { num_output: 3
  kernel_size: 2 stride: 2 weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" } } }
layer { name: "down" type: "Pooling" bottom: "up" top: "down" top: "mask" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "elu" type: "ELU" bottom: "down" top: "elu" }
layer { name: "abs" type: "AbsVal" bottom: "elu" top: "abs" }
layer { name: "pow" type: "Power" bottom: "abs" top: "pow" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "slice" type: "Slice" bottom: "pow" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 1 } }
layer { name: "cat" type: "Concat" bottom: "s2" bottom: "s1" top: "cat" }
layer { name: "loss" type: "EuclideanLoss" bottom: "cat" bottom: "target" top: "loss" }
layer { name: "argmax" type: "ArgMax" bottom: "cat" top: "argmax" argmax_param { top_k: 2 out_max_val: true } }
layer { name: "argmax_c" type: "ArgMax" bottom: "cat" top: "argmax_c" argmax_param { axis: 1 } }
'''

INPUTS = {"data": lambda rng, shape: rng.standard_normal(shape), "target": lambda rng, shape: rng.standard_normal(shape),
          "label": lambda rng, shape: np.array([1.0, 4.0])}   # label 4 is ZOO's ignore_label


def forward_backward(text: str, xp: Any, phase: int, dtype: Any) -> Net:
    """A net built the normal way on ``xp``, its inputs filled from a fixed seed, after one forward+backward."""
    net = Net(net_param(text), phase, xp=xp, seed=0, dtype=dtype)
    rng = np.random.default_rng(1)
    for name in net.input_names:
        blob = net.blobs[name]
        blob.data[...] = xp.asarray(INPUTS[name](rng, blob.shape).astype(dtype))
    net.clear_param_diffs()
    net.forward()
    net.backward()
    return net


def assert_nets_agree(ref: Net, other: Net, dtype: Any) -> None:
    """Every blob's data and diff and every param's data and diff, device run against NumPy run."""
    tol = tolerance(dtype)
    for name, blob in ref.blobs.items():
        mine = other.blobs[name]
        np.testing.assert_allclose(host(mine.data), blob.data, err_msg=f"blob {name} data", **tol)
        if blob.has_diff:
            np.testing.assert_allclose(host(mine.diff), blob.diff, err_msg=f"blob {name} diff", **tol)
    for p, q in zip(ref.learnable_params, other.learnable_params):
        what = f"{p.layer_name} param {p.index}"
        np.testing.assert_allclose(host(q.data), p.data, err_msg=f"{what} data", **tol)
        np.testing.assert_allclose(host(q.diff), p.diff, err_msg=f"{what} diff", **tol)


@pytest.mark.parametrize("text,phase,dtype", [(ZOO, TRAIN, np.float32), (ZOO, TEST, np.float32),
                                              (ZOO, TRAIN, np.float64), (EXTRAS, TRAIN, np.float32),
                                              (EXTRAS, TEST, np.float64)],
                         ids=["zoo-train-f32", "zoo-test-f32", "zoo-train-f64", "extras-train-f32", "extras-test-f64"])
def test_layers_forward_backward_match_numpy(dev, text, phase, dtype):
    ref = forward_backward(text, np, phase, dtype)
    mine = forward_backward(text, dev, phase, dtype)
    assert isinstance(mine.blobs["data"].data, strict_xp.DeviceArray)
    assert_nets_agree(ref, mine, dtype)
    if text is ZOO:  # every RawKernel ran, through its CUDA signature check
        assert set(strict_xp.launches) == {"im2col", "col2im", "max_pool_fwd", "max_pool_bwd", "ave_pool_fwd",
                                           "ave_pool_bwd", "lrn_fwd", "lrn_bwd"}


def test_dropout_train_draws_its_mask_on_the_device(dev):
    """CuPy's Dropout draws from cupy.random, so its mask cannot equal NumPy's: check the arithmetic instead."""
    text = ('force_backward: true layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 40 dim: 50 } } }'
            'layer { name: "drop" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.3 } }')
    net = Net(net_param(text), TRAIN, xp=dev, seed=0)
    x = np.random.default_rng(0).standard_normal((40, 50)).astype(np.float32)
    net.blobs["x"].data[...] = dev.asarray(x)
    net.forward()
    mask = host(net.layer("drop")._mask)
    assert set(np.unique(mask)) == {np.float32(0), np.float32(1 / 0.7)} and 0.62 < (mask > 0).mean() < 0.78
    np.testing.assert_allclose(host(net.blobs["y"].data), x * mask, rtol=1e-6)
    net.blobs["y"].diff = dev.asarray(np.full((40, 50), 2.0, np.float32))
    net.backward()
    np.testing.assert_allclose(host(net.blobs["x"].diff), 2.0 * mask, rtol=1e-6)


# ------------------------------------------------------------------ the data ----

@pytest.mark.parametrize("phase,transform", [
    (TRAIN, 'crop_size: 6 mirror: true mean_file: "{mean}" scale: 0.5'),
    (TRAIN, "crop_size: 5 mirror: true mean_value: 10 mean_value: 20 mean_value: 30"),
    (TEST, 'crop_size: 6 mean_file: "{mean}"'),
    (TRAIN, "mean_value: 100 scale: 0.25"),
    (TRAIN, ""),
])
def test_data_layer_transforms_and_device_transfer_match_numpy(dev, tmp_path, phase, transform):
    make_lmdb(tmp_path / "db", n=10, shape=(3, 8, 10))
    write_mean(tmp_path / "mean.binaryproto",
               np.random.default_rng(5).uniform(0, 255, (3, 8, 10)).astype(np.float32))
    tp = f"transform_param {{ {transform.format(mean=tmp_path / 'mean.binaryproto')} }}"
    text = f"layer {{ {data_text(tmp_path / 'db', 4, tp)} }}"
    batches: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for name, xp in (("numpy", np), ("device", dev)):
        with Net(net_param(text), phase, xp=xp, seed=3) as net:
            batches[name] = []
            for _ in range(3):  # 12 records of 10: the third batch wraps around
                net.forward()
                batches[name].append((host(net.blobs["data"].data), host(net.blobs["label"].data)))
            if xp is dev:
                assert isinstance(net.blobs["data"].data, strict_xp.DeviceArray)
    for (a, la), (b, lb) in zip(batches["numpy"], batches["device"]):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-5)
        np.testing.assert_array_equal(lb, la)


def test_data_layer_frees_a_batch_only_after_the_device_used_it(dev, tmp_path, monkeypatch):
    """A batch allocated on the prefetch stream lives until this stream's kernels queued before it ran."""
    events: list[Any] = []

    def record(event: Any = None) -> Any:
        events.append(SimpleNamespace(done=False, synchronize=lambda: None))
        return events[-1]
    monkeypatch.setattr(strict_xp.cuda, "get_current_stream", lambda: SimpleNamespace(
        record=record, synchronize=lambda: None, use=lambda: None))
    make_lmdb(tmp_path / "db", n=10, shape=(3, 8, 10))
    with Net(net_param(f"layer {{ {data_text(tmp_path / 'db', 4, '')} }}"), TRAIN, xp=dev, seed=3) as net:
        layer = net.layers[0]
        net.forward()
        net.forward()
        assert len(layer._held) == 2 and len(events) == 2  # neither event is done: both batches held
        first = layer._held[0][0][0]
        events[0].done = True
        net.forward()
        assert len(layer._held) == 2 and all(arr is not first for arr in layer._held[0][0])


IMAGE_AND_HDF5 = '''
layer { name: "img" type: "ImageData" top: "img" top: "label" image_data_param { source: "list.txt" batch_size: 4
  shuffle: true new_height: 8 new_width: 8 } transform_param { crop_size: 6 mirror: true mean_value: 5 scale: 0.1 } }
layer { name: "h5" type: "HDF5Data" top: "h5" top: "extra" hdf5_data_param { source: "h5.txt" batch_size: 4 shuffle: true } }
layer { name: "ip" type: "InnerProduct" bottom: "img" top: "ip" inner_product_param { num_output: 3
  weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ip_h5" type: "InnerProduct" bottom: "h5" top: "ip_h5" inner_product_param { num_output: 3
  weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "scores" type: "Eltwise" bottom: "ip" bottom: "ip_h5" top: "scores" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "scores" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "scores" bottom: "label" top: "acc" top: "per_class" }
layer { name: "silence" type: "Silence" bottom: "extra" }
'''

DEPLOY = '''
input: "data" input_shape { dim: 2 dim: 3 dim: 6 dim: 6 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 3 kernel_size: 3
  weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "prob" type: "Softmax" bottom: "pool" top: "prob" }
'''


def test_image_and_hdf5_data_test_time_and_classify_on_the_device(dev, tmp_path):
    """What `trainer test`, `trainer time` and `trainer classify` run, on ImageData and HDF5Data sources."""
    import cv2
    import h5py
    rng = np.random.default_rng(2)
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i % 3}\n" for i in range(6)))
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"{i}.png"), rng.integers(0, 256, (10 + i, 9, 3), dtype=np.uint8))
    with h5py.File(tmp_path / "part.h5", "w") as h:
        h["h5"] = rng.standard_normal((5, 2, 3)).astype(np.float32)
        h["extra"] = rng.standard_normal((5, 4)).astype(np.float32)
    (tmp_path / "h5.txt").write_text(f"{tmp_path / 'part.h5'}\n")
    results: dict[str, Any] = {}
    for name, xp in (("numpy", np), ("device", dev)):
        with Net(net_param(IMAGE_AND_HDF5), TRAIN, xp=xp, seed=4, base_dir=tmp_path) as net:
            scored = score_net(net, 3)
            timing = time_net(net, 1)
        with Net(net_param(DEPLOY), TEST, xp=xp, seed=0) as deploy:
            probs = Classifier(deploy, mean=np.array([100.0, 110.0, 120.0]), image_dims=(8, 8)).predict(
                [cv2.imread(str(tmp_path / f"{i}.png"))[:, :, ::-1] / 255.0 for i in range(3)])
        assert len(timing.layers) == len(net.layers) and timing.backward_ms > 0
        results[name] = (scored, probs)
    (ref, ref_probs), (mine, my_probs) = results["numpy"], results["device"]
    assert mine.mean_loss == pytest.approx(ref.mean_loss, rel=1e-5)
    for out in ref.names:
        np.testing.assert_allclose(mine.means[out], ref.means[out], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(my_probs, ref_probs, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- the solver ----

@pytest.mark.parametrize("solver", [
    {"type": "SGD", "momentum": 0.9, "weight_decay": 0.01},
    {"type": "SGD", "momentum": 0.9, "weight_decay": 0.01, "regularization_type": "L1", "iter_size": 2},
    {"type": "Nesterov", "momentum": 0.9, "weight_decay": 0.005, "clip_gradients": 1.0},
    {"type": "Adam", "momentum": 0.9, "momentum2": 0.999, "delta": 1e-8, "clip_gradients": 0.5},
    {"type": "AdaGrad", "weight_decay": 0.01}, {"type": "RMSProp", "rms_decay": 0.9},
    {"type": "AdaDelta", "momentum": 0.95, "delta": 1e-6},
], ids=lambda s: "-".join(str(v) for v in s.values()))
def test_update_rules_match_numpy(dev, solver):
    runs = {}
    for name, xp in (("numpy", np), ("device", dev)):
        rng = np.random.default_rng(0)
        params = [P(xp.asarray(rng.standard_normal(shape).astype(np.float32)), xp.zeros(shape, np.float32), lr, decay)
                  for shape, lr, decay in [((3, 4), 1.0, 1.0), ((5,), 2.0, 0.0), ((2, 2), 0.0, 1.0)]]
        rule = make_rule(caffe_pb2.SolverParameter(base_lr=0.1, **solver), params, xp)
        for it in range(3):
            for p in params:
                p.diff[...] = xp.asarray(rng.standard_normal(p.data.shape).astype(np.float32))
            rule.apply(0.1 * (it + 1), it)
        runs[name] = [host(p.data) for p in params] + [host(h) for h in rule.history]
    for a, b in zip(runs["numpy"], runs["device"]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ the rails ----

def test_label_and_nan_rails_fire_on_the_device(dev):
    messages: dict[str, list[str]] = {}
    for name, xp in (("numpy", np), ("device", dev)):
        net = Net(net_param(RAILS_NET), TRAIN, xp=xp, seed=0)
        rails.install(net)
        data = np.ones((4, 2, 1, 1), np.float32)
        net.layer("data").reset(data, np.array([0, 1, 3, 2]))
        with pytest.raises(rails.LabelError) as label_error:
            net.forward()
        net.layer("data").reset(data, np.array([0, 1, 2, 2]))
        net.layer("fc").blobs[0].data[...] = np.inf
        with np.errstate(all="ignore"):
            loss = net.forward()
        assert rails.first_non_finite_layer(net) == ("fc", "InnerProduct", "fc")
        with pytest.raises(rails.DivergedError) as nan_error:
            rails.check_loss(net, loss, 4, 0.01)
        net.close()
        messages[name] = [str(label_error.value), str(nan_error.value)]
    assert messages["device"] == messages["numpy"]


# ----------------------------------------------------- fit, snapshots, weights ----

def tiny_solver(project: Callable[..., str], name: str, dropout: float, **kw: Any) -> str:
    """tests/test_fit.py's tiny LMDB project, 6 iterations, snapshots every 3, with the Dropout ratio given."""
    solver = project(name, max_iter=6, snapshot=3, test_interval=3, **kw)
    net = f"{name}.net"  # project() wrote it beside the solver, in the current directory
    with open(net, encoding="utf-8") as f:
        text = f.read().replace("dropout_ratio: 0.2", f"dropout_ratio: {dropout}")
    with open(net, "w", encoding="utf-8") as f:
        f.write(text)
    return solver


def run_fit(solver: str, device: str, **kw: Any) -> tuple[Any, str]:
    """``trainer fit`` as the CLI runs it; the result and the log."""
    log = io.StringIO()
    return fit(FitOptions(solver=solver, device=device, stream=log, handle_signals=False, **kw)), log.getvalue()


def losses(result: Any) -> list[float]:
    return [v for _, v in result.train_losses]


def test_fit_snapshot_resume_and_weights_match_numpy(dev, project, tmp_path):  # noqa: F811  (fixture)
    """A short ``trainer fit --device gpu`` (the strict module) against the same run on NumPy.

    Dropout 0: on CuPy the masks come from the device generator, never equal to NumPy's (see
    test_dropout_train_draws_its_mask_on_the_device); the layer still runs its device path.
    """
    ref, _ = run_fit(tiny_solver(project, "cpu.prototxt", 0.0, prefix="cpu/run"), "cpu")
    mine, log = run_fit(tiny_solver(project, "gpu.prototxt", 0.0, prefix="gpu/run"), "gpu")
    assert "strict_xp" in log   # backend.select("gpu") took the strict module for CuPy
    assert [it for it, _ in mine.train_losses] == list(range(6))
    np.testing.assert_allclose(losses(mine), losses(ref), rtol=1e-5)
    assert mine.test_scores[0] == pytest.approx(ref.test_scores[0], rel=1e-5)
    for it in (3, 6):  # snapshots: host copies of device weights and history, in Caffe's formats
        ours = caffemodel_blobs(read_caffemodel(tmp_path / f"gpu/run_iter_{it}.caffemodel"))
        for layer, arrays in caffemodel_blobs(read_caffemodel(tmp_path / f"cpu/run_iter_{it}.caffemodel")).items():
            for x, y in zip(arrays, ours[layer]):
                np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7)
        ours_state = read_solverstate(tmp_path / f"gpu/run_iter_{it}.solverstate")
        for x, y in zip(read_solverstate(tmp_path / f"cpu/run_iter_{it}.solverstate").history, ours_state.history):
            np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7)
    # Resume on the device from the iteration-3 snapshot: the rest of the uninterrupted NumPy run.
    rest, _ = run_fit("gpu.prototxt", "gpu", snapshot="gpu/run_iter_3.solverstate")
    np.testing.assert_allclose(losses(rest), losses(ref)[3:], rtol=1e-5)
    # Weights from a .caffemodel onto a device net (Net.copy_from), then a forward on them.
    outs = {}
    for name, xp in (("numpy", np), ("device", dev)):
        with Net.from_file(tmp_path / "gpu.prototxt.net", TEST, xp=xp, seed=0) as net:
            assert load_weights(net, tmp_path / "cpu/run_iter_6.caffemodel").copied == ["conv1", "fc"]
            net.forward()
            outs[name] = net.outputs()
    assert outs["device"]["accuracy"] == pytest.approx(outs["numpy"]["accuracy"])
    assert outs["device"]["loss"] == pytest.approx(outs["numpy"]["loss"], rel=1e-5)


def test_resume_with_dropout_on_the_device_repeats_the_uninterrupted_run(dev, project):  # noqa: F811
    """README: a resumed run gives the same losses as an uninterrupted one on the same device."""
    whole, _ = run_fit(tiny_solver(project, "a.prototxt", 0.5, prefix="a/run"), "gpu")
    tiny_solver(project, "b.prototxt", 0.5, prefix="b/run")
    run_fit("b.prototxt", "gpu", max_iter=3)
    rest, _ = run_fit("b.prototxt", "gpu", snapshot="b/run_iter_3.solverstate")
    assert losses(rest) == pytest.approx(losses(whole)[3:], rel=1e-6)
