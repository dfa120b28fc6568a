"""What a net folder is, from its name: the transfer paper's folder names, which grids reuse.

``half<s><X>`` base net on half X of random split s; ``transfer<s><X><s><Y>_1_<n>`` layers 1..n
copied from half<s><X>, frozen, trained on half<s><Y> (BnB when X = Y, else AnB);
``transfer-ft...`` the same fine-tuned (BnB+, AnB+); ``halfnatman<X>`` / ``transfernatman<XY>_1_<n>``
the natural / man-made split (families prefixed ``natman-``); ``nolearn[<s><Y>]_1_<n>`` the first n
layers random and frozen; ``reduced-<NNNN>`` a net on NNNN images per class; ``netbase`` all classes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FAMILIES = ("base", "BnB", "BnB+", "AnB", "AnB+", "natman-base", "natman-BnB", "natman-BnB+", "natman-AnB",
            "natman-AnB+", "random-frozen", "reduced", "whole", "other")

_HALF = re.compile(r"^half(\d+|natman)([AB])$")
_TRANSFER = re.compile(r"^transfer(-ft)?(?:(\d+)([AB])\2([AB])|natman([AB])([AB]))_1_(\d+)$")
_NOLEARN = re.compile(r"^nolearn(?:(\d+)([AB]))?_1_(\d+)$")
_REDUCED = re.compile(r"^reduced-(\d+)$")


@dataclass(frozen=True)
class NetKind:
    """A net's place in a study: family, n (copied layers), split, target half, images per class."""

    family: str
    n: int | None = None
    split: str | None = None
    half: str | None = None
    per_class: int | None = None
    source_half: str | None = None   # the half whose base net a transfer copies


def classify(name: str) -> NetKind:
    """The NetKind a folder name says; family "other" for names outside the scheme."""
    m = _HALF.match(name)
    if m:
        split = m.group(1)
        return NetKind("natman-base" if split == "natman" else "base", 0, split, m.group(2))
    m = _TRANSFER.match(name)
    if m:
        fine_tuned, n = m.group(1) is not None, int(m.group(7))
        if m.group(2) is not None:
            split, src, dst = m.group(2), m.group(3), m.group(4)
        else:
            split, src, dst = "natman", m.group(5), m.group(6)
        family = ("BnB" if src == dst else "AnB") + ("+" if fine_tuned else "")
        if split == "natman":
            family = "natman-" + family
        return NetKind(family, n, split, dst, source_half=src)
    m = _NOLEARN.match(name)
    if m:
        return NetKind("random-frozen", int(m.group(3)), m.group(1), m.group(2))
    m = _REDUCED.match(name)
    if m:
        return NetKind("reduced", None, None, None, per_class=int(m.group(1)))
    if name == "netbase":
        return NetKind("whole", 0)
    return NetKind("other")


def base_name(split: str, half: str) -> str:
    return f"half{split}{half}"


def transfer_name(split: str, source: str, target: str, n: int, fine_tuned: bool) -> str:
    ft = "-ft" if fine_tuned else ""
    if split == "natman":
        return f"transfer{ft}natman{source}{target}_1_{n}"
    return f"transfer{ft}{split}{source}{split}{target}_1_{n}"
