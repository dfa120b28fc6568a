"""The preprocessing a net was trained with, read from its training prototxt, as classify options.

``trainer classify`` defaults to Caffe's ``classify.py``, which is ImageNet's recipe: pixels
0..255 (``raw_scale`` 255), no further scaling, and 10 crops that include mirrored images. A net
trained on another recipe is fed other numbers than it learned from. LeNet's data layer, for
example, multiplies pixels by 1/256 (``scale: 0.00390625``) and never mirrors, so those defaults
give it inputs 256 times too large plus mirrored digits, and it answers about 50/50.

``--train-net TRAIN_VAL.prototxt`` takes the options from the training net's data layer instead
(its TEST-phase one; the TRAIN one when no data layer is in TEST). A Data layer reads 0..255
pixels, subtracts the mean, then multiplies by ``scale``, which is classify's pipeline with:

- ``raw_scale`` 255, and ``input_scale`` = ``scale`` (when it is not 1);
- the mean: ``mean_value``, or ``mean_file`` reduced to its per-channel mean (as classify does
  with a mean file). The file is looked for where Caffe looks, the current directory, and then in
  the prototxt's own folder;
- crops: 10 crops when the net was trained with ``mirror: true`` (the TRAIN layer's), one center
  crop when it was not;
- the size images are resized to before cropping (``image_dims``): with ``crop_size``, the size of
  the images the crops were cut from: a Data layer's source database's first image (256x256 for
  CaffeNet's recipe), or an ImageData layer's ``new_height`` x ``new_width``. Found in the current
  directory or beside the prototxt; when it is not there, classify's own default applies (the mean
  image's size, else the crop).

Options given on the command line win over these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datakit.errors import ConfigError
from datakit.formats import caffe_pb2

__all__ = ["TrainNetPreprocessing", "preprocessing_from_train_net"]

# Data layers that apply a transform_param, and those that feed values as they are (a deploy net's
# Input layer is not looked at: a deploy net says nothing of the training data).
_TRANSFORMING = ("Data", "ImageData", "WindowData", "MemoryData")
_DATA = _TRANSFORMING + ("HDF5Data", "DummyData", "Python")


@dataclass(frozen=True)
class TrainNetPreprocessing:
    """Classifier options equivalent to one training data layer's ``transform_param``."""

    source: str                  # "PROTOTXT layer NAME (TYPE, PHASE)", for messages
    raw_scale: float
    input_scale: float | None
    mean: np.ndarray | None      # C×H×W image or per-channel values
    mean_source: str | None      # the mean file, or "mean_value"
    oversample: bool
    image_dims: tuple[int, int] | None = None   # H, W to resize to before cropping; None: the crop
    dims_source: str | None = None               # where image_dims came from, or why it is None

    def options(self, **given: object) -> dict:
        """:class:`trainer.classify.Classifier` keyword arguments: these, where ``given`` (the caller's
        own choices) is None or absent; ``mean`` / ``mean_source`` only when the net has a mean."""
        taken: dict = {"raw_scale": self.raw_scale, "input_scale": self.input_scale,
                       "oversample": self.oversample, "image_dims": self.image_dims}
        if self.mean is not None:
            taken.update(mean=self.mean, mean_source=self.mean_source)
        return taken | {k: v for k, v in given.items() if v is not None}

    def describe(self, *, mean_given: bool = False) -> str:
        """One line for the command line: what was taken from the training net (``mean_given``: the
        caller's own mean replaces the net's)."""
        scale = f"input scale {self.input_scale:g}" if self.input_scale is not None else "no input scale"
        mean = "the mean given" if mean_given else f"mean from {self.mean_source}" if self.mean_source else "no mean"
        crops = "10 crops (trained with mirror)" if self.oversample else "center crop (trained without mirror)"
        dims = ""
        if self.image_dims is not None:
            dims = f", images resized to {self.image_dims[0]}x{self.image_dims[1]} ({self.dims_source}) first"
        elif self.dims_source:
            dims = f", the training images' size unknown ({self.dims_source})"
        return f"preprocessing from {self.source}: raw scale {self.raw_scale:g}, {mean}, {scale}, {crops}{dims}"


def _first_data_layer(param: caffe_pb2.NetParameter, phase: int) -> caffe_pb2.LayerParameter | None:
    from trainer.net.rules import filter_net
    return next((lp for lp in filter_net(param, caffe_pb2.NetState(phase=phase)) if lp.type in _DATA), None)


def _data_layer(param: caffe_pb2.NetParameter, path: str) -> tuple[caffe_pb2.LayerParameter, str]:
    for phase in (caffe_pb2.TEST, caffe_pb2.TRAIN):
        layer = _first_data_layer(param, phase)
        if layer is not None:
            return layer, caffe_pb2.Phase.Name(phase)
    raise ConfigError(f"{path}: no data layer in this net; --train-net wants the train_val prototxt the "
                      "weights were trained with (the one with the Data layer), not a deploy net")


def _candidates(name: str, net_path: Path) -> list[Path]:
    """Where a path in a net is looked for: as Caffe does (the current directory), then beside the net."""
    return [Path(name)] if Path(name).is_absolute() else [Path(name), net_path.parent / name]


def _stored_size(layer: caffe_pb2.LayerParameter, net_path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """(H, W) of the images a layer's crops were cut from, and where that came from (or why not known)."""
    if not layer.transform_param.crop_size:
        return None, None
    if layer.type == "ImageData" and layer.image_data_param.new_height and layer.image_data_param.new_width:
        p = layer.image_data_param
        return (int(p.new_height), int(p.new_width)), "new_height x new_width"
    if layer.type != "Data" or not layer.data_param.source:
        return None, None
    from datakit.db import open_reader
    from datakit.errors import DatakitError
    for candidate in _candidates(layer.data_param.source, net_path):
        if candidate.exists():
            try:
                with open_reader(candidate, decode=True, color=None) as reader:
                    first = next(iter(reader), None)
            except DatakitError as err:
                return None, f"{candidate} could not be read: {err}"
            if first is None or first.image is None:
                return None, f"{candidate} is empty"
            return (int(first.image.shape[1]), int(first.image.shape[2])), f"the size in {candidate}"
    return None, f"its source {layer.data_param.source} was not found to read the size from; --image-dims sets it"


def _find_mean_file(name: str, net_path: Path) -> Path:
    tried = _candidates(name, net_path)
    for candidate in tried:
        if candidate.is_file():
            return candidate
    where = " or ".join(str(p) for p in tried)
    raise ConfigError(f"{net_path}: its mean_file {name} is not at {where}; give the mean file itself "
                      "(trainer classify --mean; on the board, a *mean*.binaryproto in the model's folder)")


def preprocessing_from_train_net(path: str | os.PathLike, *, with_mean: bool = True) -> TrainNetPreprocessing:
    """What the training net ``path`` did to its images, as :class:`trainer.classify.Classifier` options.

    ``with_mean=False`` leaves the mean out (the caller has its own), so a mean file that is not
    where the net names it is no error then.
    """
    from datakit.formats.blobproto import read_mean
    from datakit.formats.prototxt import read_net
    net_path = Path(path)
    param = read_net(net_path)
    layer, phase = _data_layer(param, str(net_path))
    source = f"{net_path.name} layer {layer.name} ({layer.type}, {phase})"
    if layer.type not in _TRANSFORMING:
        raise ConfigError(f"{net_path}: its data layer {layer.name} is {layer.type}, which feeds values as they "
                          "were stored; give --raw-scale, --mean and --input-scale for what made them")
    tp = layer.transform_param
    if tp.mean_file and len(tp.mean_value):
        raise ConfigError(f"{net_path}: layer {layer.name} gives mean_file and mean_value; Caffe takes one")
    mean: np.ndarray | None = None
    mean_source: str | None = None
    if with_mean and tp.mean_file:
        found = _find_mean_file(tp.mean_file, net_path)
        mean, mean_source = read_mean(found), str(found)
    elif with_mean and len(tp.mean_value):
        mean, mean_source = np.array(tp.mean_value, dtype=np.float32), "mean_value"
    scale = float(tp.scale) if tp.HasField("scale") else 1.0
    # Whether the net learned from mirrored images is the TRAIN layer's to say (TEST layers do not mirror).
    train = _first_data_layer(param, caffe_pb2.TRAIN)
    mirrored = bool((train if train is not None else layer).transform_param.mirror)
    dims, dims_source = _stored_size(layer, net_path)
    return TrainNetPreprocessing(source=source, raw_scale=255.0, input_scale=None if scale == 1.0 else scale,
                                 mean=mean, mean_source=mean_source, oversample=mirrored, image_dims=dims,
                                 dims_source=dims_source)
