"""Transferred nets: copy the first n learnable layers of a base net, frozen or fine-tuned.

From a base net (any generation of prototxt, upgraded on read), `transfer_net` builds the net of
Yosinski et al.'s experiments for (base, target data, n, frozen | fine-tuned):

- the first n **learnable layers** (layers with weights, counted in the net's order: Convolution,
  Deconvolution, InnerProduct, Embed, PReLU, Scale and Bias with their own blobs) keep their names,
  so ``trainer fit --weights BASE.caffemodel`` copies them by name;
- **frozen**: every blob of those layers gets ``lr_mult: 0`` and ``decay_mult: 0``;
  **fine-tuned**: they keep the base's multipliers;
- learnable layers above n are renamed ``<name>-new`` and so are the blobs they produce (every
  later bottom/top that names them, in-place ReLUs and the accuracy layer included), so that no
  weights are copied into them and they start from their fillers;
- data layers read the target dataset (``source``, ``mean_file``) and, when asked, the top
  learnable layer gets the target's class count (``num_output``).

``keep_names=True`` gives the paper's "random frozen layers" control (nolearn): the first n
layers frozen, nothing renamed, trained with no weights copied. The function works on NetParameter
messages only (no arrays), so it runs anywhere the prototxt tools run.
"""

from __future__ import annotations

from dataclasses import dataclass

from datakit.errors import ConfigError
from datakit.formats import caffe_pb2

SUFFIX = "-new"

# Layer types that can have learned blobs (how many: _blob_count).
LEARNABLE_TYPES = ("Convolution", "Deconvolution", "InnerProduct", "Embed", "PReLU", "Scale", "Bias")

_DATA_PARAMS = {"Data": "data_param", "ImageData": "image_data_param", "HDF5Data": "hdf5_data_param",
                "WindowData": "window_data_param"}


@dataclass
class TransferSpec:
    """What to build: n copied layers, frozen or fine-tuned, and the target dataset (None: keep)."""

    layers: int
    frozen: bool
    source: str | None = None          # data layers with no phase rule (2014 train/val files)
    train_source: str | None = None    # data layers included in TRAIN
    test_source: str | None = None     # data layers included in TEST
    mean_file: str | None = None
    num_output: int | None = None      # the top learnable layer's outputs (the target's classes)
    keep_names: bool = False           # nolearn: freeze the first n, rename nothing


def _blob_count(layer: caffe_pb2.LayerParameter) -> int:
    """How many learnable blobs `layer` has (its weights, plus a bias when it has one)."""
    kind = layer.type
    if kind in ("Convolution", "Deconvolution"):
        return 1 + int(layer.convolution_param.bias_term)
    if kind == "InnerProduct":
        return 1 + int(layer.inner_product_param.bias_term)
    if kind == "Embed":
        return 1 + int(layer.embed_param.bias_term)
    if kind == "Scale":
        return 0 if len(layer.bottom) > 1 else 1 + int(layer.scale_param.bias_term)
    if kind == "Bias":
        return 0 if len(layer.bottom) > 1 else 1
    if kind == "PReLU":
        return 1
    return 0


def learnable_layers(net: caffe_pb2.NetParameter) -> list[caffe_pb2.LayerParameter]:
    """The layers with learned blobs, in the net's order (a layer listed twice, as in a train/val
    file with one per phase, counts once: the same name is the same weights)."""
    seen: set[str] = set()
    found = []
    for layer in net.layer:
        if layer.type in LEARNABLE_TYPES and _blob_count(layer) and layer.name not in seen:
            seen.add(layer.name)
            found.append(layer)
    return found


def _phase_of(layer: caffe_pb2.LayerParameter) -> int | None:
    phases = {rule.phase for rule in layer.include if rule.HasField("phase")}
    if layer.HasField("phase"):
        phases.add(layer.phase)
    return phases.pop() if len(phases) == 1 else None


def _retarget_data(layer: caffe_pb2.LayerParameter, spec: TransferSpec) -> None:
    field = _DATA_PARAMS.get(layer.type)
    if field is None:
        return
    phase = _phase_of(layer)
    source = {caffe_pb2.TRAIN: spec.train_source, caffe_pb2.TEST: spec.test_source}.get(phase, spec.source)
    if source is not None:
        getattr(layer, field).source = source
    if spec.mean_file is not None and layer.type != "HDF5Data":
        layer.transform_param.mean_file = spec.mean_file
        del layer.transform_param.mean_value[:]


def check_sources(base: caffe_pb2.NetParameter, spec: TransferSpec) -> None:
    """Refuse a source option that no data layer of `base` takes: --train-source on a 2014 train net
    (no phase rules) or --source on a train/val net would otherwise be dropped, and the net would
    train or test on the base's data with no word. (`trainer grid make` passes all three on purpose.)"""
    phases = [_phase_of(layer) for layer in base.layer if layer.type in _DATA_PARAMS]
    wanted = {"--source": (spec.source, None, "data layer without a phase rule"),
              "--train-source": (spec.train_source, caffe_pb2.TRAIN, "TRAIN-phase data layer"),
              "--test-source": (spec.test_source, caffe_pb2.TEST, "TEST-phase data layer")}
    for option, (value, phase, what) in wanted.items():
        if value is not None and phase not in phases:
            hint = ("--train-source / --test-source" if option == "--source" else "--source")
            raise ConfigError(f"{option}: the net {base.name or ''} has no {what} for it to set "
                              f"(its data layers: {_describe_phases(phases)}); give {hint}")


def _describe_phases(phases: list[int | None]) -> str:
    if not phases:
        return "none"
    names = {None: "no phase rule", caffe_pb2.TRAIN: "TRAIN", caffe_pb2.TEST: "TEST"}
    return ", ".join(names.get(phase, str(phase)) for phase in phases)


def _freeze(layer: caffe_pb2.LayerParameter) -> None:
    blobs = _blob_count(layer)
    while len(layer.param) < blobs:
        layer.param.add()
    for spec in layer.param[:blobs]:
        spec.lr_mult = 0.0
        spec.decay_mult = 0.0


def _set_num_output(layer: caffe_pb2.LayerParameter, count: int) -> None:
    for field in ("convolution_param", "inner_product_param", "embed_param"):
        if layer.HasField(field) or (field == "inner_product_param" and layer.type == "InnerProduct"):
            getattr(layer, field).num_output = count
            return
    raise ConfigError(f"layer {layer.name} ({layer.type}) has no num_output to set")


def transfer_net(base: caffe_pb2.NetParameter, spec: TransferSpec) -> caffe_pb2.NetParameter:
    """The transferred net for `spec` (see the module docstring); `base` is not modified."""
    learnable = learnable_layers(base)
    names = [layer.name for layer in learnable]
    if not 0 <= spec.layers <= len(names):
        raise ConfigError(f"--layers {spec.layers}: the net {base.name or ''} has {len(names)} learnable "
                          f"layers ({', '.join(names)}); choose 0..{len(names)}")
    copied = set(names[:spec.layers])
    renamed = set() if spec.keep_names else set(names[spec.layers:])
    if spec.num_output is not None and names and names[-1] in copied and not spec.keep_names:
        raise ConfigError(f"--num-output: the top layer {names[-1]} is copied (--layers {spec.layers}), "
                          "so its outputs must stay the base's")
    net = caffe_pb2.NetParameter()
    net.CopyFrom(base)
    blob_rename: dict[str, str] = {}
    for layer in net.layer:
        original = layer.name
        for i, bottom in enumerate(layer.bottom):
            layer.bottom[i] = blob_rename.get(bottom, bottom)
        if original in renamed:
            for top in layer.top:
                blob_rename[top] = top + SUFFIX
            layer.name = original + SUFFIX
        for i, top in enumerate(layer.top):
            layer.top[i] = blob_rename.get(top, top)
        if spec.frozen and original in copied:
            _freeze(layer)
        if spec.num_output is not None and names and original == names[-1]:
            _set_num_output(layer, spec.num_output)
        _retarget_data(layer, spec)
    return net
