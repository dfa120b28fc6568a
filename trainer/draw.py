"""Draw a net as a graph, as Caffe's ``python/draw_net.py`` does: layers as boxes, blobs as edges.

Each layer is a box naming the layer, its type and its main parameters (kernel, stride, pad and
outputs for convolutions, the method and window for pooling, ``num_output`` for inner products,
...); each blob is an edge labelled with its name from the layer that writes it to each layer
that reads it (net inputs and outputs, which have no layer at one end, are octagons), or with
``blobs="nodes"`` an octagon between them as draw_net.py draws it.
In-place layers (one bottom, the same blob as top: ReLU, Dropout, ...) are folded into the box of
the layer that wrote their blob, so a conv + ReLU reads as one step instead of a loop.

The graph is built with the ``graphviz`` package (it quotes names and labels for DOT correctly)
and laid out by Graphviz's ``dot`` program, which is a system package (``apt-get install
graphviz``). Writing ``.dot`` / ``.gv`` needs only the package: the source can be laid out
elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from datakit.errors import ConfigError, FormatError
from datakit.formats import caffe_pb2

__all__ = ["NetDrawing", "net_drawing", "net_graph", "render", "draw_file", "dot_available", "FORMATS"]

#: output formats by file suffix ("dot": the DOT source, no Graphviz program needed).
FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".gv": "dot"}

# Colours as Caffe's draw.py chooses them by layer type.
_COLOURS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
            "InnerProduct": "#CC33FF"}
_DEFAULT_COLOUR = "#6495ED"
_BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
_LAYER_STYLE = {"shape": "box", "style": "filled,rounded"}


def _dims(values, h: int = 0, w: int = 0) -> str:
    """`kernel_size: 3` / `kernel_h: 3 kernel_w: 5` as '3' or '3x5'."""
    vals = list(values)
    if h or w:
        return f"{h}x{w}"
    if not vals:
        return ""
    return "x".join(str(v) for v in vals) if len(vals) > 1 else str(vals[0])


def layer_details(lp: caffe_pb2.LayerParameter) -> list[str]:
    """The main parameters of a layer, one short line each (what draw_net prints in the box)."""
    t = lp.type
    if t in ("Convolution", "Deconvolution"):
        p = lp.convolution_param
        out = [f"{p.num_output} outputs", f"kernel {_dims(p.kernel_size, p.kernel_h, p.kernel_w)}"]
        stride = _dims(p.stride, p.stride_h, p.stride_w)
        pad = _dims(p.pad, p.pad_h, p.pad_w)
        out.append(f"stride {stride or 1}, pad {pad or 0}")
        if p.group > 1:
            out.append(f"group {p.group}")
        return out
    if t == "Pooling":
        p = lp.pooling_param
        method = caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)
        if p.global_pooling:
            return [f"{method} global"]
        return [f"{method} {_dims([p.kernel_size] if p.kernel_size else [], p.kernel_h, p.kernel_w)}",
                f"stride {_dims([p.stride], p.stride_h, p.stride_w)}, pad {_dims([p.pad], p.pad_h, p.pad_w)}"]
    if t == "InnerProduct":
        return [f"{lp.inner_product_param.num_output} outputs"]
    if t == "LRN":
        p = lp.lrn_param
        return [f"size {p.local_size}, alpha {p.alpha:g}, beta {p.beta:g}"]
    if t == "Dropout":
        return [f"ratio {lp.dropout_param.dropout_ratio:g}"]
    if t == "Data":
        p = lp.data_param
        backend = caffe_pb2.DataParameter.DB.Name(p.backend)
        return [f"{backend} {Path(p.source).name}", f"batch {p.batch_size}"]
    if t == "ImageData":
        p = lp.image_data_param
        return [f"list {Path(p.source).name}", f"batch {p.batch_size}"]
    if t == "HDF5Data":
        p = lp.hdf5_data_param
        return [f"list {Path(p.source).name}", f"batch {p.batch_size}"]
    if t == "Input":
        return ["x".join(str(d) for d in s.dim) for s in lp.input_param.shape]
    if t == "Accuracy" and lp.accuracy_param.top_k > 1:
        return [f"top {lp.accuracy_param.top_k}"]
    if t == "Concat":
        return [f"axis {lp.concat_param.axis}"]
    if t == "Eltwise":
        return [caffe_pb2.EltwiseParameter.EltwiseOp.Name(lp.eltwise_param.operation)]
    return []


@dataclass
class LayerBox:
    """One box of the drawing: a layer and the in-place layers folded into it."""

    node: str
    layer: caffe_pb2.LayerParameter
    folded: list[caffe_pb2.LayerParameter] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [self.layer.name] + [f.name for f in self.folded]

    def label_lines(self) -> list[str]:
        lines = [f"{self.layer.name} ({self.layer.type})", *layer_details(self.layer)]
        for f in self.folded:
            extra = layer_details(f)
            lines.append(f"+ {f.name} ({f.type})" + (f": {extra[0]}" if extra else ""))
        return lines


@dataclass
class NetDrawing:
    """The graph of a net, before Graphviz: boxes, blobs and edges (tests read this directly)."""

    name: str
    boxes: list[LayerBox] = field(default_factory=list)
    blobs: dict[str, str] = field(default_factory=dict)        # node id -> blob name
    edges: list[tuple[str, str]] = field(default_factory=list)  # (from node, to node)

    @property
    def layer_names(self) -> list[str]:
        return [n for box in self.boxes for n in box.names]


def _phase_layers(net: caffe_pb2.NetParameter, phase: int | None) -> list[caffe_pb2.LayerParameter]:
    from trainer.net import filter_net  # Caffe's include/exclude rules, the same as training uses
    if phase is None:
        return list(net.layer)
    return filter_net(net, caffe_pb2.NetState(phase=phase))


def _legacy_input_layer(net: caffe_pb2.NetParameter) -> list[caffe_pb2.LayerParameter]:
    """Net-level ``input:`` fields shown as the Input layer Caffe upgrades them to."""
    if not net.input:
        return []
    lp = caffe_pb2.LayerParameter(name="input", type="Input")
    for i, name in enumerate(net.input):
        lp.top.append(name)
        shape = lp.input_param.shape.add()
        if i < len(net.input_shape):
            shape.dim.extend(net.input_shape[i].dim)
        else:
            shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
    return [lp]


def net_drawing(net: caffe_pb2.NetParameter, phase: int | None = None) -> NetDrawing:
    """Boxes, blobs and edges of `net` (all layers when `phase` is None, as draw_net's ALL)."""
    drawing = NetDrawing(net.name or "net")
    writer: dict[str, LayerBox] = {}   # blob name -> the box that last wrote it
    blob_node: dict[str, str] = {}     # blob name -> its current node id
    read: set[str] = set()             # blob nodes some layer reads

    def new_blob(name: str) -> str:
        node = f"blob{len(drawing.blobs)}"
        drawing.blobs[node] = name
        blob_node[name] = node
        return node

    for i, lp in enumerate(_legacy_input_layer(net) + _phase_layers(net, phase)):
        in_place = len(lp.bottom) == 1 and len(lp.top) == 1 and lp.bottom[0] == lp.top[0]
        if in_place and lp.top[0] in writer:
            writer[lp.top[0]].folded.append(lp)
            continue
        box = LayerBox(f"layer{i}", lp)
        drawing.boxes.append(box)
        for bottom in lp.bottom:
            src = blob_node.get(bottom) or new_blob(bottom)
            drawing.edges.append((src, box.node))
            read.add(src)
        for top in lp.top:
            # A blob nobody has read yet is the same blob written again: the TRAIN and TEST data
            # layers of a train_val net (all phases drawn) both feed conv1. Once read, a write
            # is a new node, so an in-place layer on a net input reads input -> layer -> blob.
            node = blob_node.get(top)
            drawing.edges.append((box.node, node if node is not None and node not in read else new_blob(top)))
            writer[top] = box
    return drawing


def blob_edges(drawing: NetDrawing) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """The drawing with blobs as edges: (writer box, reader box, blob name) for every blob read by
    a layer, and the blob nodes still needed: blobs no drawn layer wrote (net inputs) or read
    (net outputs such as loss and accuracy), which would vanish as edges."""
    writers: dict[str, list[str]] = {}
    readers: dict[str, list[str]] = {}
    for src, dst in drawing.edges:
        if dst in drawing.blobs:
            writers.setdefault(dst, []).append(src)
        else:
            readers.setdefault(src, []).append(dst)
    edges, nodes = [], {}
    for blob, name in drawing.blobs.items():
        ws, rs = writers.get(blob, []), readers.get(blob, [])
        if ws and rs:
            edges += [(w, r, name) for w in ws for r in rs]
        else:
            nodes[blob] = name
            edges += [(w, blob, "") for w in ws] + [(blob, r, "") for r in rs]
    return edges, nodes


def net_graph(net: caffe_pb2.NetParameter, *, rankdir: str = "LR", phase: int | None = None,
              blobs: str = "edges"):
    """A ``graphviz.Digraph`` of the net (see the module docstring for what is drawn).

    ``blobs="edges"``: a blob is an edge from the layer that writes it to each layer that reads
    it, labelled with its name (net inputs and outputs stay octagons); ``"nodes"``: every blob is
    an octagon, as Caffe's draw_net.py draws it.
    """
    try:
        import graphviz
    except ImportError as err:  # a dependency; only missing in a broken install
        raise ConfigError("the `graphviz` Python package is missing: pip install graphviz") from err
    if rankdir not in ("LR", "TB", "RL", "BT"):
        raise ConfigError(f"rankdir {rankdir!r}: expected LR, TB, RL or BT")
    if blobs not in ("edges", "nodes"):
        raise ConfigError(f"blobs {blobs!r}: expected edges or nodes")
    drawing = net_drawing(net, phase)
    g = graphviz.Digraph(name=drawing.name, graph_attr={"rankdir": rankdir, "label": drawing.name,
                                                        "labelloc": "t", "fontname": "Helvetica"},
                         node_attr={"fontname": "Helvetica", "fontsize": "10"},
                         edge_attr={"fontname": "Helvetica", "fontsize": "9"})
    for box in drawing.boxes:
        colour = _COLOURS.get(box.layer.type, _DEFAULT_COLOUR)
        # escape() doubles backslashes in names, so only our own "\\n" separators are DOT escapes.
        label = "\\n".join(graphviz.escape(line) for line in box.label_lines())
        g.node(box.node, label=label, fillcolor=colour, tooltip=graphviz.escape(box.layer.name), **_LAYER_STYLE)
    if blobs == "nodes":
        edges, nodes = [(src, dst, "") for src, dst in drawing.edges], drawing.blobs
    else:
        edges, nodes = blob_edges(drawing)
    for node, name in nodes.items():
        g.node(node, label=graphviz.escape(name), tooltip=graphviz.escape(name), **_BLOB_STYLE)
    for src, dst, name in edges:
        if name:
            g.edge(src, dst, label=graphviz.escape(name), tooltip=graphviz.escape(name))
        else:
            g.edge(src, dst)
    return g


def dot_available() -> bool:
    """Whether Graphviz's ``dot`` program can be run."""
    import shutil
    return shutil.which("dot") is not None


def render(net: caffe_pb2.NetParameter, fmt: str = "svg", *, rankdir: str = "LR",
           phase: int | None = None, blobs: str = "edges") -> bytes:
    """The drawing as bytes in `fmt` (svg, png, pdf; dot gives the DOT source)."""
    g = net_graph(net, rankdir=rankdir, phase=phase, blobs=blobs)
    if fmt == "dot":
        return g.source.encode("utf-8")
    import graphviz
    try:
        return g.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise ConfigError("Graphviz's `dot` program is not installed (Debian/Ubuntu: apt-get install graphviz; "
                          "macOS: brew install graphviz); or write a .dot file, which needs no Graphviz") from None
    except graphviz.CalledProcessError as err:
        raise FormatError(f"dot failed on the graph of {net.name or 'the net'}: {err}") from None


def format_for(out: str | os.PathLike) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"{out}: unknown output format {suffix or '(none)'}; "
                          f"use one of {', '.join(sorted(FORMATS))}")
    return FORMATS[suffix]


def draw_file(prototxt: str | os.PathLike, out: str | os.PathLike, *, rankdir: str = "LR",
              phase: int | None = None, blobs: str = "edges") -> NetDrawing:
    """Read a net prototxt, write its drawing to `out` (format from the suffix), return what was drawn."""
    from datakit.atomic import write_bytes_atomic
    from datakit.formats.prototxt import read_net

    fmt = format_for(out)
    net = read_net(prototxt)
    data = render(net, fmt, rankdir=rankdir, phase=phase, blobs=blobs)
    write_bytes_atomic(out, data)
    return net_drawing(net, phase)
