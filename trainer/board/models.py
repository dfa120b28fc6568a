"""A model's page: which files make it up, and classifying an uploaded image with it.

A model is a folder with a deploy prototxt (``*deploy*.prototxt``) and ``.caffemodel`` weights
(the newest by default; a snapshot folder holds several). Beside them the board looks for class
names (``labels.txt``, ``synset_words.txt``, ``*names*.txt``, one per line) and a mean
(``*mean*.binaryproto`` or ``*mean*.npy``), and the net the weights were trained with
(``*train_val*.prototxt``, ``*train_test*.prototxt``). Classification is ``trainer classify``'s,
through :class:`trainer.classify.Classifier`: with a training net, ``trainer classify --train-net``'s
(its data layer's scale, mean and crops; the folder's mean file wins over the net's); without one,
Caffe's classify.py defaults (pixels 0..255, 10 crops).

An uploaded image is decoded from the request's bytes in memory (with datakit's pixel limit
against decompression bombs) and never written anywhere. Loaded nets are kept (two at most)
until their files change, and one net classifies one image at a time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from datakit.errors import ConfigError

__all__ = ["ModelFiles", "model_files", "ClassifierCache", "classify_bytes"]

_LABEL_NAMES = ("labels.txt", "synset_words.txt")
_TRAIN_NET_NAMES = ("train_val", "train_test", "trainval")


@dataclass
class ModelFiles:
    folder: Path
    deploy: Path
    weights: list[Path]          # newest first
    labels: Path | None
    mean: Path | None
    train_net: Path | None = None

    def stamp(self, weights: Path) -> tuple:
        files = [self.deploy, weights] + [p for p in (self.labels, self.mean, self.train_net) if p is not None]
        return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)


def model_files(folder: Path) -> ModelFiles:
    """The files of the model in `folder` (ConfigError when it has no deploy net or no weights)."""
    names = sorted(p for p in folder.iterdir() if p.is_file())
    deploys = [p for p in names if p.suffix == ".prototxt" and "deploy" in p.name]
    weights = sorted((p for p in names if p.suffix == ".caffemodel"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not deploys or not weights:
        raise ConfigError(f"{folder.name}: a model folder needs a *deploy*.prototxt and a .caffemodel")
    labels = next((p for p in names if p.name in _LABEL_NAMES), None) or \
        next((p for p in names if p.suffix == ".txt" and "names" in p.name), None)
    mean = next((p for p in names if "mean" in p.name and p.suffix in (".binaryproto", ".npy")), None)
    train_net = next((p for p in names if p.suffix == ".prototxt" and any(k in p.name for k in _TRAIN_NET_NAMES)),
                     None)
    return ModelFiles(folder, deploys[0], weights, labels, mean, train_net)


class _Loaded:
    def __init__(self, clf, labels: list[str] | None) -> None:
        self.clf = clf
        self.labels = labels
        self.lock = threading.Lock()


class ClassifierCache:
    """Deploy nets with their weights loaded, by files and their modification times."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._items: OrderedDict[tuple, _Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, files: ModelFiles, weights: Path) -> _Loaded:
        key = files.stamp(weights)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        loaded = _load(files, weights)
        with self._lock:
            self._items[key] = loaded
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return loaded


def _load(files: ModelFiles, weights: Path) -> _Loaded:
    from datakit.formats import caffe_pb2
    from datakit.formats.blobproto import read_mean

    from trainer import backend
    from trainer.classify import Classifier, read_labels
    from trainer.net import Net
    from trainer.weights import load_weights

    net = Net.from_file(files.deploy, caffe_pb2.TEST, xp=backend.select("cpu", 0))
    report = load_weights(net, weights)
    if report.initialised:
        raise ConfigError(f"{weights.name}: has no weights for layer(s) {', '.join(report.initialised)} of "
                          f"{files.deploy.name}; their predictions would be random")
    mean = read_mean(files.mean) if files.mean is not None else None
    options: dict = {"mean": mean}
    if files.train_net is not None:   # the folder's mean wins over the net's
        from trainer.classify_train_net import preprocessing_from_train_net
        options = preprocessing_from_train_net(files.train_net, with_mean=mean is None).options(mean=mean)
    labels = read_labels(files.labels) if files.labels is not None else None
    return _Loaded(Classifier(net, **options), labels)


def classify_bytes(loaded: _Loaded, data: bytes, *, top_k: int = 5, max_pixels: int = 40_000_000) -> list[dict]:
    """Top-k classes of one image given as bytes (decoded in memory): rank, class, prob, name."""
    import numpy as np

    from datakit.images import decode_image

    clf = loaded.clf
    img = decode_image(data, color=clf.color, max_pixels=max_pixels)   # BGR (or gray) uint8
    if clf.color:
        img = img[:, :, ::-1]   # as trainer.classify.load_image: RGB in [0, 1]
    img = np.ascontiguousarray(img, dtype=np.float32) / 255.0
    with loaded.lock:
        probs = clf.predict([img])[0]
    labels = loaded.labels
    if labels is not None and len(labels) < probs.shape[0]:
        raise ConfigError(f"the labels file has {len(labels)} names but the net predicts {probs.shape[0]} classes")
    order = np.argsort(-probs, kind="stable")[:top_k]
    return [{"rank": r + 1, "class": int(i), "prob": float(probs[i]), "name": labels[i] if labels else ""}
            for r, i in enumerate(order)]
