"""`datakit fetch-mean NAME`: the archive of a mean recipe, downloaded, and the mean taken out and checked.

The archive is read as a tar stream; only the members a recipe names are written, as
regular files directly under the output folder (no path from the archive is trusted,
and ``imagenet.bet.pickle`` of Caffe's archive is never extracted). The mean is checked
before it is kept (see :mod:`datakit.model_zoo`).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datakit.atomic import write_bytes_atomic
from datakit.errors import FormatError
from datakit.formats.blobproto import blob_shape, blob_to_array, parse_blobproto
from datakit.model_zoo import MeanRecipe


@dataclass
class MeanReport:
    mean: Path
    channel_means: list[float]
    identical_to_reference: bool
    extracted: list[Path] = field(default_factory=list)


def check_mean(data: bytes, recipe: MeanRecipe, where: str) -> tuple[list[float], bool]:
    """Per-channel means and whether the bytes are the reference copy's; FormatError when it is not the mean."""
    blob = parse_blobproto(data, where=where)
    shape = blob_shape(blob)
    if tuple(shape) != recipe.shape:
        raise FormatError(f"{where}: shape {shape}, but the {recipe.name} mean is {recipe.shape}")
    arr: np.ndarray = blob_to_array(blob, where=where).reshape(recipe.shape[-3:])
    means = [float(v) for v in arr.reshape(arr.shape[0], -1).mean(axis=1)]
    if not np.allclose(means, recipe.channel_means, atol=0.01):
        want = ", ".join(f"{v:.4f}" for v in recipe.channel_means)
        got = ", ".join(f"{v:.4f}" for v in means)
        raise FormatError(f"{where}: per-channel means {got}, but the {recipe.name} mean's are {want} "
                          "(stored order): not the published mean")
    return means, hashlib.sha256(data).hexdigest() == recipe.sha256


def extract_mean(archive: str | os.PathLike, recipe: MeanRecipe, out_dir: str | os.PathLike,
                 extras: bool = False) -> MeanReport:
    """Write the recipe's mean (and with ``extras`` its text files) from ``archive`` into ``out_dir``."""
    out = Path(out_dir)
    wanted = {recipe.member, *(recipe.extras if extras else ())}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = Path(member.name).name
                if name in wanted and member.isfile() and name not in found:
                    f = tar.extractfile(member)
                    if f is not None:
                        found[name] = f.read()
    except (tarfile.TarError, EOFError, OSError) as err:
        why = " ".join(str(err).split("\n")[0].split()).rstrip(":")  # tarfile's 'r:*' lists each method tried
        raise FormatError(f"{archive}: not a readable tar archive ({why}); delete it and run again") from None
    if recipe.member not in found:
        raise FormatError(f"{archive}: holds no {recipe.member}; is it {recipe.archive}?")
    means, identical = check_mean(found[recipe.member], recipe, f"{archive}:{recipe.member}")
    report = MeanReport(out / recipe.member, means, identical)
    for name, data in sorted(found.items()):
        write_bytes_atomic(out / name, data)
        if name != recipe.member:
            report.extracted.append(out / name)
    return report
