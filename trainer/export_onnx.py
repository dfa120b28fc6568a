"""Export a Caffe net and its weights to ONNX: ``trainer export NET.prototxt W.caffemodel -o m.onnx``.

The net is built by the trainer in the TEST phase (so V0/V1 prototxts and caffemodels are
upgraded on read, Split layers are inserted, shapes are inferred), the weights are copied
in by layer name, and each layer becomes the ONNX nodes of :mod:`trainer.onnx_layers`.
The graph's inputs are the net's Input layer tops (or legacy ``input:`` fields) with a
symbolic batch size; its outputs are the blobs no layer consumes, under their Caffe
names, so ``session.run(["prob"], {"data": x})`` reads like ``net.blobs["prob"]``.

Optionally the input preprocessing is folded in as a first node, the way
``transform_param`` applies it: ``(x - mean) * scale``, with the mean a per-channel
``mean_value`` list or a mean image (a ``.binaryproto`` / ``.npy``; centre-cropped to the
input size when larger, as Caffe's TEST phase crops it), so the model takes BGR pixels.

In-place layers (top == bottom) are given fresh value names (ONNX is single-assignment);
the last value of a blob keeps the blob's name.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from datakit.atomic import write_bytes_atomic
from datakit.errors import ConfigError, FormatError

from trainer.onnx_layers import CONVERTERS, DATA_LAYERS, TRAINING_ONLY, UnsupportedLayer, unsupported

DEFAULT_OPSET = 17


class Graph:
    """The ONNX graph being built: nodes, initializers, value names, the trainer's blob shapes."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        from onnx import helper, numpy_helper
        self._helper, self._numpy = helper, numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.names: set[str] = set()
        self.shapes = shapes

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> str:
        self.names.update(outputs)
        self.nodes.append(self._helper.make_node(op, inputs, outputs, name=self.fresh(f"{op}:{outputs[0]}"), **attrs))
        return outputs[0]

    def const(self, name: str, value: np.ndarray) -> str:
        name = name if name not in self.names else self.fresh(name)
        self.names.add(name)
        self.initializers.append(self._numpy.from_array(np.asarray(value), name))
        return name

    def scalar(self, value: float) -> str:
        return self.const(self.fresh("const"), np.array(value, np.float32))

    def shape_const(self, layer: str, shape: tuple[int, ...], bottom_shape: tuple[int, ...]) -> str:
        """A Reshape target: the batch axis copied (0) when the reshape keeps it, so the batch
        size stays free; the trainer's static shape when it does not (e.g. a reshape to (-1, C))."""
        target = [0, *shape[1:]] if shape[:1] == bottom_shape[:1] else list(shape)
        return self.const(self.fresh(f"{layer}/shape"), np.array(target, np.int64))

    def shape(self, blob: str) -> tuple[int, ...]:
        return self.shapes[blob]


def preprocessing(mean: np.ndarray | None, scale: float | None, input_shape: tuple[int, ...]) -> tuple[
        np.ndarray | None, float | None]:
    """The mean as an array broadcastable to one input (C×1×1 or C×H×W); checks it fits."""
    if mean is None:
        return None, scale
    c, h, w = input_shape[1:]
    mean = np.asarray(mean, np.float32)
    if mean.ndim == 1:
        if mean.size not in (1, c):
            raise ConfigError(f"--mean-value has {mean.size} values for a {c}-channel input; give "
                              + ("1" if c == 1 else f"1 or {c}"))
        return mean.reshape(-1, 1, 1), scale
    if mean.ndim == 3 and mean.shape[0] != c:
        raise ConfigError(f"the mean image has {mean.shape[0]} channel(s) ({'x'.join(map(str, mean.shape))}) but "
                          f"the input takes {c}; use the mean made from this net's training data, or --mean-value")
    if mean.ndim != 3 or mean.shape[1] < h or mean.shape[2] < w:
        raise ConfigError(f"the mean image is {'x'.join(map(str, mean.shape))} (CxHxW) but the input is "
                          f"{c}x{h}x{w}; give a mean at least that large, or --mean-value")
    top, left = (mean.shape[1] - h) // 2, (mean.shape[2] - w) // 2
    return np.ascontiguousarray(mean[:, top:top + h, left:left + w]), scale


def build_net(prototxt: str | os.PathLike, weights: str | os.PathLike | None) -> Any:
    """The trainer's TEST net for `prototxt` with `weights` copied in (V0/V1 files upgraded)."""
    from datakit.formats.prototxt import read_net
    from trainer.net import TEST, Net
    param = read_net(prototxt)
    for lp in param.layer:
        if lp.type in DATA_LAYERS:
            raise FormatError(f"{prototxt}: layer {lp.name} ({lp.type}) reads a dataset; export the deploy net, "
                              "whose input is an Input layer (or input: / input_shape fields)")
    net = Net(param, TEST)
    if weights is not None:
        from trainer.weights import load_weights
        load_weights(net, weights)
    return net


def export_onnx(prototxt: str | os.PathLike, weights: str | os.PathLike | None, output: str | os.PathLike, *,
                mean: np.ndarray | None = None, scale: float | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """Write `output` (an ONNX model of the net with its weights) atomically; returns its path.

    Raises UnsupportedLayer (a FormatError) naming the first layer ONNX cannot express,
    before anything is written.
    """
    import onnx
    if opset < 13:
        raise ConfigError(f"--opset {opset}: the converters need opset 13 or newer (Softmax along one axis, "
                          "Split sizes as an input)")
    net = build_net(prototxt, weights)
    try:
        model = net_to_onnx(net, mean=mean, scale=scale, opset=opset)
    finally:
        net.close()
    onnx.checker.check_model(model)
    out = Path(output)
    write_bytes_atomic(out, model.SerializeToString())
    return out


def net_to_onnx(net: Any, *, mean: np.ndarray | None = None, scale: float | None = None,
                opset: int = DEFAULT_OPSET, producer: str = "datakit trainer export") -> Any:
    """The ONNX ModelProto of a built trainer Net (weights as initializers)."""
    from onnx import TensorProto, helper
    shapes = {name: tuple(int(d) for d in blob.shape) for name, blob in net.blobs.items()}
    g = Graph(shapes)
    inputs: list[str] = []
    current: dict[str, str] = {}
    input_layers = [i for i, l in enumerate(net.layers) if l.type == "Input"]
    for i in input_layers:
        for t in net.top_names[i]:
            g.names.add(t)
            inputs.append(t)
            current[t] = t
    if not inputs:
        raise FormatError(f"net {net.name!r}: no Input layer or input: fields; the exported model needs an input")
    if mean is not None or (scale is not None and scale != 1.0):
        if len(inputs) != 1 or len(shapes[inputs[0]]) != 4:
            raise ConfigError("mean / scale preprocessing needs exactly one N×C×H×W input")
        m, s = preprocessing(mean, scale, shapes[inputs[0]])
        x = inputs[0]
        if m is not None:
            x = g.node("Sub", [x, g.const(g.fresh("preprocess/mean"), m)], [g.fresh(f"{x}/centred")])
        if s is not None and s != 1.0:
            x = g.node("Mul", [x, g.scalar(s)], [g.fresh(f"{inputs[0]}/scaled")])
        current[inputs[0]] = x

    writes = Counter(t for i, names in enumerate(net.top_names) if i not in input_layers for t in names)
    for i, layer in enumerate(net.layers):
        if i in input_layers:
            continue
        if layer.type in TRAINING_ONLY:
            raise unsupported(layer, "it is a training layer; export the deploy net (without losses or accuracy)")
        convert = CONVERTERS.get(layer.type)
        if convert is None:
            raise UnsupportedLayer(f"layer {layer.name} ({layer.type}): no ONNX converter for this layer type "
                                   f"(exportable: {', '.join(sorted(CONVERTERS))})")
        bottoms = [current[b] for b in net.bottom_names[i]]
        tops = []
        for t in net.top_names[i]:
            writes[t] -= 1
            tops.append(t if writes[t] == 0 and t not in g.names else g.fresh(f"{t}/{layer.name}"))
        convert(g, layer, bottoms, tops)
        for t, v in zip(net.top_names[i], tops):
            current[t] = v

    outputs = list(net.output_names)
    graph_outputs = []
    for name in outputs:
        if current[name] != name:   # an input passed through untouched, or a renamed value
            g.node("Identity", [current[name]], [g.fresh(f"{name}/out") if name in g.names else name])
            current[name] = g.nodes[-1].output[0]
        # the batch axis stays free unless a reshape made the first axis something else
        first = "N" if shapes[name][:1] == shapes[inputs[0]][:1] else shapes[name][0]
        graph_outputs.append(helper.make_tensor_value_info(current[name], TensorProto.FLOAT,
                                                           [first, *shapes[name][1:]]))
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", *shapes[n][1:]]) for n in inputs]
    graph = helper.make_graph(g.nodes, net.name or "net", graph_inputs, graph_outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name=producer)
    model.ir_version = min(model.ir_version, 8)   # readable by ONNX Runtime releases back to 1.10
    return model


__all__ = ["export_onnx", "net_to_onnx", "build_net", "UnsupportedLayer", "DEFAULT_OPSET"]
