"""Classify image files with a deploy net, as Caffe's python/classify.py does.

The pipeline is Caffe's Classifier: load the image as RGB in [0, 1]; resize
it to ``image_dims`` (default: the mean image's H×W when one is given, else the
net's input size); take the center crop of the net's
input size, or Caffe's 10-crop oversampling (four corners and the center,
and their mirrors) with the predictions averaged; transpose to C×H×W; swap
channels (default 2,1,0: RGB to the BGR order Caffe models are trained in);
multiply by ``raw_scale`` (255); subtract the mean; multiply by
``input_scale``. The mean is the per-channel mean of a mean file (as
classify.py does with ``mean.mean(1).mean(1)``) or explicit values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from collections.abc import Sequence

import cv2
import numpy as np

from datakit.errors import ConfigError, FormatError
from datakit.formats import caffe_pb2
from datakit.images import read_image

from trainer.backend import to_host
from trainer.net import CopyReport, Net


def load_image(path: str | os.PathLike, color: bool = True) -> np.ndarray:
    """H×W×C float32 in [0, 1], RGB (caffe.io.load_image); H×W×1 when not ``color``."""
    img = read_image(str(path), color=color)
    if img.ndim == 2:
        img = img[:, :, None]
    if color:
        img = img[:, :, ::-1]  # decode gives BGR
    return np.ascontiguousarray(img, dtype=np.float32) / 255.0


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an H×W×C float image (caffe.io.resize_image, order 1)."""
    if img.shape[:2] == (height, width):
        return img
    out = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    return out[:, :, None] if out.ndim == 2 else out


def _fits(img: np.ndarray, ch: int, cw: int) -> tuple[int, int]:
    """The image's (h, w), after checking a ch x cw crop fits in it."""
    h, w = img.shape[:2]
    if ch > h or cw > w:
        raise ConfigError(f"crop {ch}x{cw} is larger than the resized image {h}x{w}; raise --image-dims")
    return h, w


def oversample(images: Sequence[np.ndarray], crop: tuple[int, int]) -> np.ndarray:
    """Caffe's 10 crops per image: 4 corners + center, then the same mirrored. (10N)×h×w×C."""
    ch, cw = crop
    out = []
    for img in images:
        h, w = _fits(img, ch, cw)
        hc, wc = (h - ch) / 2.0, (w - cw) / 2.0
        starts = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), (int(hc), int(wc))]
        crops = [img[y:y + ch, x:x + cw] for y, x in starts]
        crops += [c[:, ::-1] for c in crops]
        out.extend(crops)
    return np.stack(out)


def center_crop(images: Sequence[np.ndarray], crop: tuple[int, int]) -> np.ndarray:
    ch, cw = crop
    out = []
    for img in images:
        h, w = _fits(img, ch, cw)
        y, x = int((h - ch) / 2.0), int((w - cw) / 2.0)
        out.append(img[y:y + ch, x:x + cw])
    return np.stack(out)


def read_labels(path: str | os.PathLike) -> list[str]:
    """One name per line (synset_words.txt, style_names.txt); blank lines are kept as ''."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a BOM would become part of the first name
    except FileNotFoundError:
        raise ConfigError(f"{path}: labels file not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text labels file, one name per line "
                          f"({err.reason} at byte {err.start})") from None
    return [line.strip() for line in text.splitlines()]


def check_weights_cover(reports: Sequence[CopyReport], weights: str, model: str | os.PathLike) -> None:
    """ConfigError when no weights file reached some layer with params (it would predict at random).

    Caffe's classify.py prints such predictions anyway; a renamed layer (a fine-tuned
    fc8 saved as fc8_flickr) is the usual cause, and the error names the layers.
    """
    missing = set.intersection(*(set(r.initialised) for r in reports)) if reports else set()
    if missing:
        names = ", ".join(sorted(missing))
        raise ConfigError(f"{weights}: has no weights for layer(s) {names} of {model}, so they would "
                          "classify with random values; use the deploy net that matches this model "
                          "(layer names must match, e.g. a renamed last layer)")


def _not_a_deploy_net(net: Net) -> str:
    """Why a net without Input layers cannot classify files: its images would come from its own data layers.

    A train/val net (Data, ImageData, HDF5Data layers) reads its own database; classify feeds
    images through an Input layer (``input:``/``input_shape`` in older files), as deploy.prototxt has.
    """
    where = f"{net.source}: " if net.source else ""
    first = net.layers[0] if net.layers else None
    reads = f"; this one reads its images from its {first.type} layer {first.name!r} (a train/val net)" if (
        first is not None and not net.bottom_names[0]) else ""
    return (f"{where}classify needs a deploy net, whose images come in through an Input layer (input: / "
            f"input_shape in older files){reads}; give --model the deploy prototxt")


@dataclass
class Prediction:
    path: str
    probs: np.ndarray
    top: list[tuple[int, float, str]]

    def as_dict(self) -> dict[str, Any]:
        """What ``trainer classify --json`` writes for one image."""
        return {"image": self.path, "top": [{"class": i, "prob": p, "name": n} for i, p, n in self.top]}

    def format(self) -> str:
        lines = [f"{self.path}:"]
        for rank, (idx, p, name) in enumerate(self.top, start=1):
            label = f"  {name}" if name else ""
            lines.append(f"  {rank}. {p:.4f}  [{idx}]{label}")
        return "\n".join(lines)


def _mean_image_dims(mean: Any, crop: tuple[int, int]) -> tuple[int, int] | None:
    """H×W of a mean image at least as large as the crop: the size the training crops were cut from.

    Caffe's classify.py resizes to 256×256, the size of ImageNet's mean and training images, and
    cuts its 10 crops of 227 from that. Resizing to the crop itself would make the four corner
    crops the centre one: "10 crops" would be one crop and its mirror. A mean image has the
    size of the database it was computed over, so it says what that size is for any net.
    """
    if mean is None or np.ndim(mean) != 3:
        return None
    h, w = int(np.shape(mean)[1]), int(np.shape(mean)[2])
    return (h, w) if h >= crop[0] and w >= crop[1] else None


class Classifier:
    """A deploy net wrapped with Caffe's preprocessing (see the module docstring)."""

    def __init__(self, net: Net, *, mean: np.ndarray | None = None, raw_scale: float = 255.0,
                 channel_swap: Sequence[int] | None = (2, 1, 0), input_scale: float | None = None,
                 image_dims: tuple[int, int] | None = None, oversample: bool = True,
                 input_blob: str | None = None, output_blob: str | None = None,
                 mean_source: str = "mean") -> None:
        self.net = net
        inputs = net.input_names
        if input_blob is None and not inputs:
            raise ConfigError(_not_a_deploy_net(net))
        self.input_blob = input_blob or (inputs[0] if inputs else "data")
        if self.input_blob not in net.blobs:
            raise ConfigError(f"the net has no input blob {self.input_blob!r}")
        shape = net.blobs[self.input_blob].shape
        if len(shape) != 4:
            raise ConfigError(f"input blob {self.input_blob!r} has shape {shape}; a deploy net needs N×C×H×W")
        self.channels, self.crop = shape[1], (shape[2], shape[3])
        self.output_blob = output_blob or net.output_names[-1]
        if self.output_blob not in net.blobs:
            raise ConfigError(f"the net has no blob {self.output_blob!r} to read scores from "
                              f"(its outputs: {', '.join(net.output_names)})")
        self.image_dims = image_dims or _mean_image_dims(mean, self.crop) or self.crop
        self.oversample = oversample
        self.raw_scale = raw_scale
        self.input_scale = input_scale
        if self.channels == 1:
            channel_swap = None
        if channel_swap is not None and sorted(channel_swap) != list(range(self.channels)):
            raise ConfigError(f"channel swap {tuple(channel_swap)} is not a permutation of the net's "
                              f"{self.channels} channels")
        self.channel_swap = list(channel_swap) if channel_swap is not None else None
        if mean is not None:
            mean = np.asarray(mean, dtype=np.float32)
            if mean.ndim == 3:
                # A mean image: its channels must be the net's, as Caffe's Transformer.set_mean checks
                # (a 1-channel MNIST mean would otherwise be broadcast over a colour net unnoticed).
                if mean.shape[0] != self.channels:
                    raise ConfigError(f"{mean_source}: the mean has {mean.shape[0]} channel(s) "
                                      f"({'x'.join(map(str, mean.shape))}), the net's input {self.input_blob!r} "
                                      f"takes {self.channels}; use the mean made from this net's training data")
                mean = mean.mean(axis=(1, 2))
            mean = mean.reshape(-1)
            if mean.size not in (1, self.channels):
                raise ConfigError(f"{mean_source}: mean has {mean.size} channels, the net takes {self.channels}")
        self.mean = mean

    @classmethod
    def from_files(cls, model: str | os.PathLike, weights: str, *, mean_file: str | os.PathLike | None = None,
                   mean_value: Sequence[float] | None = None, xp: ModuleType | None = None,
                   **options: Any) -> Classifier:
        """A Classifier for the deploy net ``model`` with ``weights`` (a .caffemodel, or a
        comma-separated list where later files win, as Caffe's ``--weights``).

        The mean is ``mean_file`` (a .binaryproto or .npy image: its per-channel mean is
        used) or ``mean_value`` (per channel, in net channel order), not both; either replaces
        a ``mean`` array given among the other keyword arguments, which go to the constructor.
        Raises ConfigError when the weights leave a layer of the net uninitialised (see
        ``check_weights_cover``).
        """
        from trainer.weights import load_weights_list
        if mean_file is not None and mean_value is not None:
            raise ConfigError("give a mean file or mean values, not both")
        net = Net.from_file(model, caffe_pb2.TEST, xp=xp)
        check_weights_cover(load_weights_list(net, weights), weights, model)
        mean = options.pop("mean", None)   # an array already read (trainer.classify_train_net)
        if mean_file is not None:
            from datakit.formats.blobproto import read_mean
            mean = read_mean(mean_file)
        elif mean_value is not None:
            mean = np.array(mean_value, dtype=np.float32)
        options.setdefault("mean_source", str(mean_file) if mean_file is not None else "--mean-value")
        return cls(net, mean=mean, **options)

    @property
    def color(self) -> bool:
        return self.channels == 3

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """(N×h×w×C float RGB [0,1]) → N×C×h×w net input."""
        x = crops.transpose(0, 3, 1, 2)
        if self.channel_swap is not None:
            x = x[:, self.channel_swap]
        x = x * self.raw_scale
        if self.mean is not None:
            x = x - self.mean.reshape(1, -1, 1, 1)
        if self.input_scale is not None:
            x = x * self.input_scale
        return np.ascontiguousarray(x, dtype=np.float32)

    def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities (or whatever the output blob holds), one row per image."""
        resized = [resize(img, *self.image_dims) for img in images]
        crops = oversample(resized, self.crop) if self.oversample else center_crop(resized, self.crop)
        x = self.preprocess(crops)
        blob = self.net.blobs[self.input_blob]
        outs = []
        batch = blob.shape[0]
        for start in range(0, len(x), batch):
            chunk = x[start:start + batch]
            if chunk.shape[0] != blob.shape[0]:
                blob.reshape(chunk.shape)
            blob.data[...] = self.net.xp.asarray(chunk)
            self.net.forward()
            out = np.array(to_host(self.net.blobs[self.output_blob].data))
            outs.append(out.reshape(out.shape[0], -1))
        preds = np.concatenate(outs)
        if self.oversample:
            preds = preds.reshape(len(images), 10, -1).mean(axis=1)
        return preds

    def classify_files(self, paths: Sequence[str | os.PathLike], labels: Sequence[str] | None = None,
                       top_k: int = 5) -> list[Prediction]:
        images = [load_image(p, color=self.color) for p in paths]
        probs = self.predict(images)
        if labels is not None and len(labels) < probs.shape[1]:
            raise FormatError(f"the labels file has {len(labels)} names but the net predicts "
                              f"{probs.shape[1]} classes")
        out = []
        for path, row in zip(paths, probs):
            order = np.argsort(-row, kind="stable")[:top_k]
            top = [(int(i), float(row[i]), labels[i] if labels else "") for i in order]
            out.append(Prediction(str(path), row, top))
        return out
