"""Upgrade old Caffe nets to the current `layer { type: "Convolution" ... }` form.

Caffe's net format changed twice, and files of every age are still around:

* V0 (early 2014): ``layers { layer { name type:"conv" kernelsize ... } bottom top }``
  with lower-case type strings, one flat parameter message, separate
  "padding" layers, and data transforms inside the data layer.
* V1 (2014-2015): ``layers { type: CONVOLUTION convolution_param {...} blobs_lr ... }``
  with an enum type and per-blob learning-rate lists.
* current: ``layer { type: "Convolution" param { lr_mult } ... }``.

Everything downstream of this module sees only the current form, so the
trainer and weight loading have one code path. The rules follow what Caffe's
own upgrade does (upgrade_proto.cpp): field for field, padding layers folded
into the conv/pool layer they feed, data-layer transforms moved into
`transform_param`, `input`/`input_dim` turned into an Input layer.
"""

from __future__ import annotations

from datakit.errors import FormatError
from datakit.formats import caffe_pb2

V1 = caffe_pb2.V1LayerParameter

# V0 type strings -> V1 enum values.
_V0_TYPES: dict[str, int] = {
    "accuracy": V1.ACCURACY, "bnll": V1.BNLL, "concat": V1.CONCAT, "conv": V1.CONVOLUTION,
    "data": V1.DATA, "dropout": V1.DROPOUT, "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN, "hdf5_data": V1.HDF5_DATA, "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL, "images": V1.IMAGE_DATA, "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT, "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS, "pool": V1.POOLING,
    "relu": V1.RELU, "sigmoid": V1.SIGMOID, "softmax": V1.SOFTMAX, "softmax_loss": V1.SOFTMAX_LOSS,
    "split": V1.SPLIT, "tanh": V1.TANH, "window_data": V1.WINDOW_DATA,
}

# V1 enum values -> current type strings.
_V1_TYPE_NAMES: dict[int, str] = {
    V1.ABSVAL: "AbsVal", V1.ACCURACY: "Accuracy", V1.ARGMAX: "ArgMax", V1.BNLL: "BNLL",
    V1.CONCAT: "Concat", V1.CONTRASTIVE_LOSS: "ContrastiveLoss", V1.CONVOLUTION: "Convolution",
    V1.DECONVOLUTION: "Deconvolution", V1.DATA: "Data", V1.DROPOUT: "Dropout",
    V1.DUMMY_DATA: "DummyData", V1.EUCLIDEAN_LOSS: "EuclideanLoss", V1.ELTWISE: "Eltwise",
    V1.EXP: "Exp", V1.FLATTEN: "Flatten", V1.HDF5_DATA: "HDF5Data", V1.HDF5_OUTPUT: "HDF5Output",
    V1.HINGE_LOSS: "HingeLoss", V1.IM2COL: "Im2col", V1.IMAGE_DATA: "ImageData",
    V1.INFOGAIN_LOSS: "InfogainLoss", V1.INNER_PRODUCT: "InnerProduct", V1.LRN: "LRN",
    V1.MEMORY_DATA: "MemoryData", V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    V1.MVN: "MVN", V1.POOLING: "Pooling", V1.POWER: "Power", V1.RELU: "ReLU",
    V1.SIGMOID: "Sigmoid", V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    V1.SILENCE: "Silence", V1.SOFTMAX: "Softmax", V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    V1.SPLIT: "Split", V1.SLICE: "Slice", V1.TANH: "TanH", V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

# Parameter-message fields that V1 and current layers share by name and type.
_SHARED_PARAM_FIELDS = [
    f.name for f in V1.DESCRIPTOR.fields
    if f.name.endswith("_param") and f.name in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
]

_DATA_TYPES = {"Data", "ImageData", "WindowData"}


def upgrade_net(net: caffe_pb2.NetParameter, *, source: str = "<net>") -> caffe_pb2.NetParameter:
    """Return the net in the current form (a new message; the input is not modified)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    if len(out.layers) and len(out.layer):
        raise FormatError(f"{source}: uses both 'layer' and old-style 'layers' entries; use one form")
    if len(out.layers):
        if any(lay.HasField("layer") for lay in out.layers):
            _upgrade_v0_to_v1(out, source)
        _upgrade_v1_to_current(out, source)
    for layer in out.layer:
        _move_data_transform(layer)
    _upgrade_inputs(out, source)
    return out


# ------------------------------------------------------------------ V0 -> V1

def _upgrade_v0_to_v1(net: caffe_pb2.NetParameter, source: str) -> None:
    old = []
    for conn in net.layers:  # detached copies: the repeated field is cleared below
        copy = caffe_pb2.V1LayerParameter()
        copy.CopyFrom(conn)
        old.append(copy)
    old = _fold_padding_layers(old, source)
    del net.layers[:]
    for i, conn in enumerate(old):
        net.layers.add().CopyFrom(_v0_layer_to_v1(conn, f"{source}: layers #{i + 1}"))


def _fold_padding_layers(layers: list, source: str) -> list:
    """Caffe V0 had separate 'padding' layers: move their pad into the consumer."""
    pad_of_top: dict[str, tuple[str, int]] = {}
    kept = []
    for conn in layers:
        if not conn.HasField("layer"):
            kept.append(conn)
            continue
        v0 = conn.layer
        if v0.type == "padding":
            if len(conn.bottom) != 1 or len(conn.top) != 1:
                raise FormatError(f"{source}: padding layer {v0.name!r} must have one bottom and one top")
            pad_of_top[conn.top[0]] = (conn.bottom[0], v0.pad)
            continue
        for j, bottom in enumerate(conn.bottom):
            if bottom in pad_of_top:
                if v0.type not in ("conv", "pool"):
                    raise FormatError(f"{source}: padding layer output {bottom!r} feeds {v0.type!r} layer "
                                      f"{v0.name!r}; only conv and pool layers can absorb padding")
                real_bottom, pad = pad_of_top[bottom]
                conn.bottom[j] = real_bottom
                conn.layer.pad = pad
        kept.append(conn)
    return kept


def _v0_layer_to_v1(conn: caffe_pb2.V1LayerParameter, where: str) -> caffe_pb2.V1LayerParameter:
    out = caffe_pb2.V1LayerParameter()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        out.MergeFrom(conn)
        return out
    v0 = conn.layer
    kind = v0.type
    if kind not in _V0_TYPES:
        raise FormatError(f"{where} ({v0.name!r}): unknown old layer type {kind!r}")
    out.name = v0.name
    out.type = _V0_TYPES[kind]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)

    def has(field: str) -> bool:
        return v0.HasField(field)

    if kind == "conv":
        p = out.convolution_param
        if has("num_output"): p.num_output = v0.num_output
        if has("biasterm"): p.bias_term = v0.biasterm
        if has("weight_filler"): p.weight_filler.CopyFrom(v0.weight_filler)
        if has("bias_filler"): p.bias_filler.CopyFrom(v0.bias_filler)
        if has("pad"): p.pad.append(v0.pad)
        if has("kernelsize"): p.kernel_size.append(v0.kernelsize)
        if has("group"): p.group = v0.group
        if has("stride"): p.stride.append(v0.stride)
    elif kind == "innerproduct":
        p = out.inner_product_param
        if has("num_output"): p.num_output = v0.num_output
        if has("biasterm"): p.bias_term = v0.biasterm
        if has("weight_filler"): p.weight_filler.CopyFrom(v0.weight_filler)
        if has("bias_filler"): p.bias_filler.CopyFrom(v0.bias_filler)
    elif kind == "pool":
        p = out.pooling_param
        if has("pool"): p.pool = v0.pool
        if has("kernelsize"): p.kernel_size = v0.kernelsize
        if has("stride"): p.stride = v0.stride
        if has("pad"): p.pad = v0.pad
    elif kind == "lrn":
        p = out.lrn_param
        if has("local_size"): p.local_size = v0.local_size
        if has("alpha"): p.alpha = v0.alpha
        if has("beta"): p.beta = v0.beta
        if has("k"): p.k = v0.k
    elif kind == "dropout":
        if has("dropout_ratio"): out.dropout_param.dropout_ratio = v0.dropout_ratio
    elif kind == "concat":
        if has("concat_dim"): out.concat_param.concat_dim = v0.concat_dim
    elif kind in ("data", "images", "window_data", "hdf5_data", "infogain_loss"):
        _v0_data_fields(v0, out, kind)
    elif kind == "hdf5_output":
        if has("hdf5_output_param"): out.hdf5_output_param.CopyFrom(v0.hdf5_output_param)
    return out


def _v0_data_fields(v0: caffe_pb2.V0LayerParameter, out: caffe_pb2.V1LayerParameter, kind: str) -> None:
    """Data-like V0 layers: source/batch size into the data param, transforms into transform_param."""
    def has(field: str) -> bool:
        return v0.HasField(field)

    if kind == "infogain_loss":
        if has("source"): out.infogain_loss_param.source = v0.source
        return
    p = {"data": out.data_param, "images": out.image_data_param,
         "window_data": out.window_data_param, "hdf5_data": out.hdf5_data_param}[kind]
    if has("source"): p.source = v0.source
    if has("batchsize"): p.batch_size = v0.batchsize
    if kind in ("data", "images") and has("rand_skip"): p.rand_skip = v0.rand_skip
    if kind == "images":
        if has("shuffle_images"): p.shuffle = v0.shuffle_images
        if has("new_height"): p.new_height = v0.new_height
        if has("new_width"): p.new_width = v0.new_width
    if kind == "window_data":
        if has("det_fg_threshold"): p.fg_threshold = v0.det_fg_threshold
        if has("det_bg_threshold"): p.bg_threshold = v0.det_bg_threshold
        if has("det_fg_fraction"): p.fg_fraction = v0.det_fg_fraction
        if has("det_context_pad"): p.context_pad = v0.det_context_pad
        if has("det_crop_mode"): p.crop_mode = v0.det_crop_mode
    if kind != "hdf5_data":
        t = out.transform_param
        if has("scale"): t.scale = v0.scale
        if has("meanfile"): t.mean_file = v0.meanfile
        if has("cropsize"): t.crop_size = v0.cropsize
        if has("mirror"): t.mirror = v0.mirror


# ------------------------------------------------------------- V1 -> current

def _upgrade_v1_to_current(net: caffe_pb2.NetParameter, source: str) -> None:
    for i, v1 in enumerate(net.layers):
        net.layer.add().CopyFrom(_v1_layer_to_current(v1, f"{source}: layers #{i + 1}"))
    del net.layers[:]


def _v1_layer_to_current(v1: caffe_pb2.V1LayerParameter, where: str) -> caffe_pb2.LayerParameter:
    if v1.HasField("layer"):
        raise FormatError(f"{where}: V0 layer left after the V0 upgrade (internal error)")
    if v1.type not in _V1_TYPE_NAMES:
        raise FormatError(f"{where} ({v1.name!r}): layer type {V1.LayerType.Name(v1.type)} has no current equivalent")
    out = caffe_pb2.LayerParameter()
    out.name = v1.name
    out.type = _V1_TYPE_NAMES[v1.type]
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    out.blobs.extend(v1.blobs)
    out.loss_weight.extend(v1.loss_weight)
    n_specs = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    for j in range(n_specs):
        spec = out.param.add()
        if j < len(v1.param) and v1.param[j]:
            spec.name = v1.param[j]
        if j < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[j]
        if j < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[j]
        if j < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[j]
    for field in _SHARED_PARAM_FIELDS:
        if v1.HasField(field):
            getattr(out, field).CopyFrom(getattr(v1, field))
    return out


# ------------------------------------------------------------ current tidy-ups

_DEPRECATED_TRANSFORM = ("scale", "mean_file", "crop_size", "mirror")


def _data_param_of(layer: caffe_pb2.LayerParameter):
    return {"Data": layer.data_param, "ImageData": layer.image_data_param,
            "WindowData": layer.window_data_param}.get(layer.type)


def _has_deprecated_transform(layer: caffe_pb2.LayerParameter) -> bool:
    if layer.type not in _DATA_TYPES:
        return False
    field = {"Data": "data_param", "ImageData": "image_data_param", "WindowData": "window_data_param"}[layer.type]
    if not layer.HasField(field):
        return False
    p = getattr(layer, field)
    return any(p.HasField(f) for f in _DEPRECATED_TRANSFORM)


def _move_data_transform(layer: caffe_pb2.LayerParameter) -> None:
    """Move scale/mean_file/crop_size/mirror from a data layer's param into transform_param."""
    if not _has_deprecated_transform(layer):
        return
    p = _data_param_of(layer)
    for field in _DEPRECATED_TRANSFORM:
        if p.HasField(field):
            setattr(layer.transform_param, field, getattr(p, field))
            p.ClearField(field)


def _upgrade_inputs(net: caffe_pb2.NetParameter, source: str) -> None:
    """Net-level `input` + `input_dim`/`input_shape` become a leading Input layer."""
    if not len(net.input):
        if len(net.input_dim) or len(net.input_shape):
            raise FormatError(f"{source}: input_dim/input_shape given without any 'input' name")
        return
    names = list(net.input)
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    layer.top.extend(names)
    if len(net.input_shape):
        if len(net.input_shape) != len(names):
            raise FormatError(f"{source}: {len(names)} inputs but {len(net.input_shape)} input_shape entries")
        for shape in net.input_shape:
            layer.input_param.shape.add().CopyFrom(shape)
    elif len(net.input_dim):
        if len(net.input_dim) != 4 * len(names):
            raise FormatError(f"{source}: {len(names)} inputs need {4 * len(names)} input_dim values, "
                              f"got {len(net.input_dim)}")
        for i in range(len(names)):
            layer.input_param.shape.add().dim.extend(net.input_dim[4 * i:4 * i + 4])
    else:
        raise FormatError(f"{source}: inputs {names} have no input_dim or input_shape")
    layers = [layer] + list(net.layer)
    del net.layer[:]
    net.layer.extend(layers)
    net.ClearField("input")
    net.ClearField("input_dim")
    net.ClearField("input_shape")


# ------------------------------------------------------------------- solver

_SOLVER_TYPE_NAMES = {
    caffe_pb2.SolverParameter.SGD: "SGD", caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad", caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta", caffe_pb2.SolverParameter.ADAM: "Adam",
}


def upgrade_solver(solver: caffe_pb2.SolverParameter, *, source: str = "<solver>") -> caffe_pb2.SolverParameter:
    """Old `solver_type: NESTEROV` enum -> `type: "Nesterov"`; nets given inline are upgraded too."""
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(solver)
    if out.HasField("solver_type"):
        if out.HasField("type") and out.type != _SOLVER_TYPE_NAMES[out.solver_type]:
            raise FormatError(f"{source}: solver_type {caffe_pb2.SolverParameter.SolverType.Name(out.solver_type)} "
                              f"contradicts type {out.type!r}")
        out.type = _SOLVER_TYPE_NAMES[out.solver_type]
        out.ClearField("solver_type")
    for field in ("net_param", "train_net_param"):
        if out.HasField(field):
            getattr(out, field).CopyFrom(upgrade_net(getattr(out, field), source=f"{source}: {field}"))
    for i, net in enumerate(out.test_net_param):
        net.CopyFrom(upgrade_net(net, source=f"{source}: test_net_param #{i + 1}"))
    return out
