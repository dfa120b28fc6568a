"""Recipes for the published files Caffe's examples start from: model weights and the ImageNet mean.

Caffe's ``scripts/download_model_binary.py`` reads a model's ``caffemodel_url`` and
``sha1`` from the YAML front matter of ``models/<name>/readme.md``; the values below are
those published there (BVLC/caffe master). ``data/ilsvrc12/get_ilsvrc_aux.sh`` downloads
``caffe_ilsvrc12.tar.gz`` with no checksum at all; what can still be checked is the mean
inside it: a 1×3×256×256 BlobProto whose per-channel means are the well-known ones
(B 104.0070, G 116.6688, R 122.6789), and whose bytes are those of the copy that Caffe
runs of 2014 loaded (convnet_transfer's ``netbase/imagenet_mean.binaryproto``, whose
values equal pycaffe's ``ilsvrc_2012_mean.npy``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from datakit.errors import FormatError


@dataclass(frozen=True)
class ModelRecipe:
    """One trained model: where Caffe publishes it and the sha1 its readme gives."""

    name: str
    filename: str
    url: str
    sha1: str
    about: str


CAFFE_DL = "http://dl.caffe.berkeleyvision.org/"

MODELS: dict[str, ModelRecipe] = {r.name: r for r in (
    ModelRecipe("bvlc_reference_caffenet", "bvlc_reference_caffenet.caffemodel",
                CAFFE_DL + "bvlc_reference_caffenet.caffemodel", "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46",
                "CaffeNet (AlexNet variant) on ILSVRC-2012; what the Flickr Style recipe fine-tunes"),
    ModelRecipe("bvlc_alexnet", "bvlc_alexnet.caffemodel",
                CAFFE_DL + "bvlc_alexnet.caffemodel", "9116a64c0fbe4459d18f4bb6b56d647b63920377",
                "AlexNet replication on ILSVRC-2012"),
    ModelRecipe("bvlc_googlenet", "bvlc_googlenet.caffemodel",
                CAFFE_DL + "bvlc_googlenet.caffemodel", "405fc5acd08a3bb12de8ee5e23a96bec22f08204",
                "GoogLeNet replication on ILSVRC-2012"),
    ModelRecipe("bvlc_reference_rcnn_ilsvrc13", "bvlc_reference_rcnn_ilsvrc13.caffemodel",
                CAFFE_DL + "bvlc_reference_rcnn_ilsvrc13.caffemodel", "bdd8abb885819cba5e2fe1eb36235f2319477e64",
                "R-CNN detector for ILSVRC-2013 (CaffeNet with an fc-rcnn layer)"),
    ModelRecipe("finetune_flickr_style", "finetune_flickr_style.caffemodel",
                CAFFE_DL + "finetune_flickr_style.caffemodel", "443ad95a61fb0b5cd3cee55951bcc1f299186b5e",
                "CaffeNet fine-tuned on all 80,000 Flickr Style images (the recipe's result)"),
)}


@dataclass(frozen=True)
class MeanRecipe:
    """An archive that holds a mean image, and what can be checked about the mean."""

    name: str
    url: str
    archive: str
    member: str                                    # the mean's name inside the archive
    shape: tuple[int, ...]                         # as stored (num, channels, height, width)
    channel_means: tuple[float, ...]               # stored order (BGR)
    sha256: str                                    # the reference copy's bytes (see the module docstring)
    extras: tuple[str, ...]                        # other members worth extracting (text only, never the pickle)
    about: str


MEANS: dict[str, MeanRecipe] = {r.name: r for r in (
    MeanRecipe("ilsvrc12", CAFFE_DL + "caffe_ilsvrc12.tar.gz", "caffe_ilsvrc12.tar.gz",
               "imagenet_mean.binaryproto", (1, 3, 256, 256), (104.0070, 116.6688, 122.6789),
               "b5863836b6777bdb3d336d94c791864500e2aebb49f7c2bf3d20110223da244f",
               ("synset_words.txt", "synsets.txt", "det_synset_words.txt", "train.txt", "val.txt", "test.txt"),
               "Caffe's ILSVRC-2012 auxiliary files (data/ilsvrc12/get_ilsvrc_aux.sh): the mean CaffeNet, "
               "AlexNet and GoogLeNet were trained with, synset names and the split lists"),
)}


def fetch_hint(path: str | os.PathLike) -> str:
    """``"; `datakit fetch-model NAME` downloads it"`` when a missing file is named as a recipe's file, else "".

    Caffe's recipes name these files bare (``--weights bvlc_reference_caffenet.caffemodel``,
    ``mean_file: "imagenet_mean.binaryproto"``), so a newcomer who skipped the fetch step meets
    only "file not found"; the command that makes the file is the useful half of the message.
    """
    name = Path(path).name
    for model in MODELS.values():
        if name == model.filename:
            return f"; `datakit fetch-model {model.name}` downloads it"
    for mean in MEANS.values():
        if name == mean.member:
            return f"; `datakit fetch-mean {mean.name}` downloads it"
    return ""


def recipe_from_readme(folder: str | os.PathLike) -> ModelRecipe:
    """A recipe from a Caffe model folder's ``readme.md`` front matter (what download_model_binary.py reads).

    The front matter is the YAML block between the first two ``---`` lines; only its flat
    ``key: value`` lines are needed (``caffemodel``, ``caffemodel_url``, ``sha1``), so they
    are read as such, without a YAML parser.
    """
    readme = Path(folder) / "readme.md"
    try:
        lines = readme.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise FormatError(f"{readme}: cannot read the model's readme ({err})") from None
    marks = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if len(marks) < 2:
        raise FormatError(f"{readme}: no front matter (a block between two '---' lines) with caffemodel_url and sha1")
    fields: dict[str, str] = {}
    for line in lines[marks[0] + 1:marks[1]]:
        key, sep, value = line.partition(":")
        if sep and not line.startswith((" ", "\t")):
            fields[key.strip()] = value.strip().strip("'\"")
    missing = [k for k in ("caffemodel", "caffemodel_url", "sha1") if not fields.get(k)]
    if missing:
        raise FormatError(f"{readme}: front matter lacks {', '.join(missing)}")
    if Path(fields["caffemodel"]).name != fields["caffemodel"]:
        raise FormatError(f"{readme}: caffemodel {fields['caffemodel']!r} must be a plain file name")
    if not re.fullmatch(r"[0-9a-fA-F]{40}", fields["sha1"]):
        raise FormatError(f"{readme}: sha1 {fields['sha1']!r} is not 40 hex digits")
    return ModelRecipe(Path(folder).name, fields["caffemodel"], fields["caffemodel_url"], fields["sha1"].lower(),
                       fields.get("name", ""))


def unknown(kind: str, name: str, known: dict) -> str:
    """The one-line message for a name without a recipe, naming the nearest known one."""
    import difflib
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"no {kind} recipe named {name!r}: {hint}known: {', '.join(sorted(known))}"
