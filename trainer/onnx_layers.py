"""One ONNX converter per Caffe layer type, each with the trainer's arithmetic.

A converter gets the graph being built (:class:`trainer.export_onnx.Graph`), the trainer's
set-up layer (its parsed parameters and weights) and the ONNX value names of its bottoms
and tops, and adds the nodes that compute the same thing. Only what ONNX computes with
the same arithmetic is converted; anything else raises :class:`UnsupportedLayer`, whose
message names the layer and says why.

Caffe details that matter:

* Pooling sizes are ceil-mode, minus a last window that would start in the right pad;
  the output size is computed as the trainer does (``kernels.pool_out_size``) and
  expressed as explicit end padding in floor mode. AVE divides by the window clipped
  to ``[-pad, size + pad)``: the input is zero-padded by ``pad`` first and the pooling
  then excludes only the extra end padding (``count_include_pad=0``).
* LRN ACROSS_CHANNELS is ONNX's LRN (both divide alpha by local_size); WITHIN_CHANNEL
  is ``x · (1 + alpha · avepool(x²))^-beta`` with every window counted whole.
* STOCHASTIC pooling is its TEST form, the activation-weighted average Σx² / (FLT_MIN + Σx).
* InnerProduct flattens from ``axis``; BatchNorm in TEST uses the stored sums divided by
  the scale factor; Dropout is the identity at test time (Caffe scales while training).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from datakit.errors import FormatError
from datakit.formats import caffe_pb2

from trainer import kernels

if TYPE_CHECKING:
    from trainer.export_onnx import Graph
    from trainer.layers.base import Layer


class UnsupportedLayer(FormatError):
    """A layer ONNX cannot express with the trainer's arithmetic (the message names it)."""


Converter = Callable[["Graph", "Layer", list[str], list[str]], None]
CONVERTERS: dict[str, Converter] = {}


def converts(*types: str) -> Callable[[Converter], Converter]:
    def wrap(fn: Converter) -> Converter:
        for t in types:
            CONVERTERS[t] = fn
        return fn
    return wrap


def unsupported(layer: Layer, why: str) -> UnsupportedLayer:
    return UnsupportedLayer(f"layer {layer.name} ({layer.type}): cannot be exported to ONNX: {why}")


def weights(layer: Layer, k: int) -> np.ndarray:
    from trainer.backend import to_host
    return np.ascontiguousarray(to_host(layer.blobs[k].data), dtype=np.float32)


# -- convolution, pooling, normalisation ----------------------------------------------------

@converts("Convolution", "Deconvolution")
def convolution(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    op = "Conv" if l.type == "Convolution" else "ConvTranspose"
    inputs = [g.const(f"{l.name}.0", weights(l, 0))]
    if l.bias_term:
        inputs.append(g.const(f"{l.name}.1", weights(l, 1)))
    for b, t in zip(bottoms, tops):
        g.node(op, [b, *inputs], [t], kernel_shape=[l.kh, l.kw], pads=[l.ph, l.pw, l.ph, l.pw],
               strides=[l.sh, l.sw], dilations=[l.dh, l.dw], group=l.group)


@converts("Pooling")
def pooling(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    if len(tops) > 1:
        raise unsupported(l, "the MAX mask top (Caffe's flat argmax indices) has no ONNX equivalent")
    n, c, h, w = g.shape(l.param.bottom[0])
    is_max = l.method == caffe_pb2.PoolingParameter.MAX
    if l.method == caffe_pb2.PoolingParameter.STOCHASTIC:
        _stochastic_test(g, l, bottoms, tops, h, w)
        return
    if l.global_pooling:
        g.node("GlobalMaxPool" if is_max else "GlobalAveragePool", bottoms, tops)
        return
    padded = bool(l.ph or l.pw)
    oh = kernels.pool_out_size(h, l.kh, l.ph, l.sh, l.ceil_mode, padded=padded)
    ow = kernels.pool_out_size(w, l.kw, l.pw, l.sw, l.ceil_mode, padded=padded)
    # floor-mode end padding that gives Caffe's output size (never negative: Caffe's windows start inside)
    eh = max(0, (oh - 1) * l.sh + l.kh - h - 2 * l.ph)
    ew = max(0, (ow - 1) * l.sw + l.kw - w - 2 * l.pw)
    if is_max:
        g.node("MaxPool", bottoms, tops, kernel_shape=[l.kh, l.kw], strides=[l.sh, l.sw],
               pads=[l.ph, l.pw, l.ph + eh, l.pw + ew])
        return
    x = bottoms[0]
    if l.ph or l.pw:
        pads = g.const(g.fresh(f"{l.name}/pads"), np.array([0, 0, l.ph, l.pw, 0, 0, l.ph, l.pw], np.int64))
        x = g.node("Pad", [x, pads], [g.fresh(f"{l.name}/padded")], mode="constant")
    g.node("AveragePool", [x], tops, kernel_shape=[l.kh, l.kw], strides=[l.sh, l.sw],
           pads=[0, 0, eh, ew], count_include_pad=0)


def _stochastic_test(g: Graph, l: Any, bottoms: list[str], tops: list[str], h: int, w: int) -> None:
    """STOCHASTIC pooling as the trainer (and Caffe) compute it at test time: Σx² / (FLT_MIN + Σx)
    over windows that start at p·stride and ignore ``pad`` (it only counts in the output size),
    zeros where a window leaves the map; each sum is an average pool of the zero-padded map
    times the window's size."""
    from trainer.layers.pool_stochastic import FLT_MIN
    eh = max(0, (l.oh - 1) * l.sh + l.kh - h)
    ew = max(0, (l.ow - 1) * l.sw + l.kw - w)
    x = bottoms[0]
    if eh or ew:   # explicit: ONNX pools refuse end padding as large as the kernel
        pads = g.const(g.fresh(f"{l.name}/pads"), np.array([0, 0, 0, 0, 0, 0, eh, ew], np.int64))
        x = g.node("Pad", [x, pads], [g.fresh(f"{l.name}/padded")], mode="constant")
    sq = g.node("Mul", [x, x], [g.fresh(f"{l.name}/sq")])

    def window_sum(v: str, what: str) -> str:
        avg = g.node("AveragePool", [v], [g.fresh(f"{l.name}/{what}_avg")], kernel_shape=[l.kh, l.kw],
                     strides=[l.sh, l.sw])
        return g.node("Mul", [avg, g.scalar(float(l.kh * l.kw))], [g.fresh(f"{l.name}/{what}")])

    den = g.node("Add", [window_sum(x, "sum"), g.scalar(FLT_MIN)], [g.fresh(f"{l.name}/den")])
    g.node("Div", [window_sum(sq, "sum_sq"), den], tops)


@converts("LRN")
def lrn(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    if l.region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        g.node("LRN", bottoms, tops, size=l.size, alpha=l.alpha, beta=l.beta, bias=l.k)
        return
    x = bottoms[0]
    pad = (l.size - 1) // 2
    sq = g.node("Mul", [x, x], [g.fresh(f"{l.name}/sq")])
    pooled = g.node("AveragePool", [sq], [g.fresh(f"{l.name}/pooled")], kernel_shape=[l.size, l.size],
                    strides=[1, 1], pads=[pad, pad, pad, pad], count_include_pad=1)
    scaled = g.node("Mul", [pooled, g.scalar(l.alpha)], [g.fresh(f"{l.name}/scaled")])
    base = g.node("Add", [scaled, g.scalar(1.0)], [g.fresh(f"{l.name}/base")])
    factor = g.node("Pow", [base, g.scalar(-l.beta)], [g.fresh(f"{l.name}/factor")])
    g.node("Mul", [x, factor], tops)


@converts("BatchNorm")
def batch_norm(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    if not l.use_global:
        raise unsupported(l, "use_global_stats is false, so it normalises with each batch's statistics; "
                             "set use_global_stats: true (the TEST phase default) to export the stored ones")
    factor = float(weights(l, 2).reshape(-1)[0])
    factor = 0.0 if factor == 0 else 1.0 / factor
    c = l.blobs[0].shape[0]
    mean = g.const(f"{l.name}.0", weights(l, 0) * np.float32(factor))
    var = g.const(f"{l.name}.1", weights(l, 1) * np.float32(factor))
    ones = g.const(g.fresh(f"{l.name}/ones"), np.ones(c, np.float32))
    zeros = g.const(g.fresh(f"{l.name}/zeros"), np.zeros(c, np.float32))
    g.node("BatchNormalization", [bottoms[0], ones, zeros, mean, var], tops, epsilon=l.eps)


@converts("Scale")
def scale(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    ndim = len(g.shape(l.param.bottom[0]))
    trailing = (1,) * (ndim - l.axis - len(l.s_shape))
    if len(bottoms) == 2:
        shape = g.const(g.fresh(f"{l.name}/shape"), np.array(tuple(l.s_shape) + trailing, np.int64))
        s = g.node("Reshape", [bottoms[1], shape], [g.fresh(f"{l.name}/s")])
        k = 0
    else:
        s = g.const(f"{l.name}.0", weights(l, 0).reshape(tuple(l.s_shape) + trailing))
        k = 1
    if not l.bias_term:
        g.node("Mul", [bottoms[0], s], tops)
        return
    y = g.node("Mul", [bottoms[0], s], [g.fresh(f"{l.name}/scaled")])
    g.node("Add", [y, g.const(f"{l.name}.{k}", weights(l, k).reshape(tuple(l.s_shape) + trailing))], tops)


# -- fully connected, shapes ----------------------------------------------------------------

@converts("InnerProduct")
def inner_product(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    x = g.node("Flatten", bottoms, [g.fresh(f"{l.name}/flat")], axis=l.axis)
    inputs = [x, g.const(f"{l.name}.0", weights(l, 0))]
    if l.bias_term:
        inputs.append(g.const(f"{l.name}.1", weights(l, 1)))
    out_shape = g.shape(l.param.top[0])
    if l.axis == 1:
        g.node("Gemm", inputs, tops, transB=0 if l.transpose else 1)
        return
    y = g.node("Gemm", inputs, [g.fresh(f"{l.name}/gemm")], transB=0 if l.transpose else 1)
    # y is (batch·the axes before `axis`, num_output): a 0 in the target would copy that product,
    # not the batch, so a free batch is inferred (-1) from the other axes, all fixed
    keeps_batch = out_shape[:1] == g.shape(l.param.bottom[0])[:1]
    target = [-1, *out_shape[1:]] if keeps_batch else list(out_shape)
    g.node("Reshape", [y, g.const(g.fresh(f"{l.name}/shape"), np.array(target, np.int64))], tops)


@converts("Flatten", "Reshape")
def reshape(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    out_shape = g.shape(l.param.top[0])
    if l.type == "Flatten" and l.param.flatten_param.axis == 1 and l.param.flatten_param.end_axis == -1:
        g.node("Flatten", bottoms, tops, axis=1)
        return
    g.node("Reshape", [bottoms[0], g.shape_const(l.name, out_shape, g.shape(l.param.bottom[0]))], tops)


@converts("Concat")
def concat(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    g.node("Concat", bottoms, tops, axis=l.axis)


@converts("Slice")
def slice_(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    sizes = [hi - lo for lo, hi in zip(l.bounds[:-1], l.bounds[1:])]
    g.node("Split", [bottoms[0], g.const(g.fresh(f"{l.name}/sizes"), np.array(sizes, np.int64))], tops, axis=l.axis)


@converts("Split")
def split(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    for t in tops:
        g.node("Identity", bottoms, [t])


@converts("Silence")
def silence(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    """Consumes its bottoms and computes nothing: no node."""


@converts("Eltwise")
def eltwise(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    E = caffe_pb2.EltwiseParameter
    if l.op == E.SUM:
        terms = bottoms
        if any(c != 1.0 for c in l.coeff):
            terms = [b if c == 1.0 else g.node("Mul", [b, g.scalar(c)], [g.fresh(f"{l.name}/term")])
                     for b, c in zip(bottoms, l.coeff)]
        g.node("Sum", terms, tops)
    elif l.op == E.PROD:
        y = bottoms[0]
        for i, b in enumerate(bottoms[1:], start=1):
            y = g.node("Mul", [y, b], tops if i == len(bottoms) - 1 else [g.fresh(f"{l.name}/prod")])
    else:
        g.node("Max", bottoms, tops)


# -- activations, softmax -------------------------------------------------------------------

@converts("ReLU")
def relu(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    if l.slope == 0.0:
        g.node("Relu", bottoms, tops)
    else:
        g.node("LeakyRelu", bottoms, tops, alpha=l.slope)


@converts("Sigmoid", "TanH", "AbsVal", "Dropout")
def elementwise(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    op = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs", "Dropout": "Identity"}[l.type]
    g.node(op, bottoms, tops)


@converts("ELU")
def elu(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    g.node("Elu", bottoms, tops, alpha=l.alpha)


@converts("PReLU")
def prelu(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    ndim = len(g.shape(l.param.bottom[0]))
    a = weights(l, 0)
    slope = a.reshape(1) if l.shared else a.reshape((a.size,) + (1,) * (ndim - 2))
    g.node("PRelu", [bottoms[0], g.const(f"{l.name}.0", slope)], tops)


@converts("Power")
def power(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    x = bottoms[0]
    steps: list[tuple[str, float]] = []
    if l.scale != 1.0:
        steps.append(("Mul", l.scale))
    if l.shift != 0.0:
        steps.append(("Add", l.shift))
    if l.power != 1.0:
        steps.append(("Pow", l.power))
    if not steps:
        g.node("Identity", bottoms, tops)
        return
    for i, (op, value) in enumerate(steps):
        x = g.node(op, [x, g.scalar(value)], tops if i == len(steps) - 1 else [g.fresh(f"{l.name}/{op.lower()}")])


@converts("Softmax")
def softmax(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    g.node("Softmax", bottoms, tops, axis=l.axis)


@converts("ArgMax")
def argmax(g: Graph, l: Any, bottoms: list[str], tops: list[str]) -> None:
    if l.top_k != 1 or l.out_max_val or l.axis is None:
        raise unsupported(l, "only ArgMax with an axis, top_k 1 and no out_max_val maps onto ONNX's ArgMax")
    idx = g.node("ArgMax", bottoms, [g.fresh(f"{l.name}/index")], axis=l.axis, keepdims=1)
    g.node("Cast", [idx], tops, to=1)  # FLOAT, as Caffe's top


TRAINING_ONLY = {"SoftmaxWithLoss", "EuclideanLoss", "Accuracy"}
DATA_LAYERS = {"Data", "ImageData", "HDF5Data", "MemoryData", "DummyData"}
