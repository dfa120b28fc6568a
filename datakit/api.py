"""The data side as calls, for notebooks: ``datakit.assemble``, ``datakit.convert``, ``datakit.mean``, ...

Each call is the CLI command of the same name: keyword arguments are the command's
long options with ``-`` written ``_`` (``datakit convert --resize-height 256`` is
``datakit.convert(..., resize_height=256)``), with the same defaults, because both
fill the same options dataclass. Each returns the command's result object instead of
printing it. These names are the public API: kept stable.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from datakit.errors import ConfigError

__all__ = ["assemble", "convert", "mean", "inspect", "open_db"]


def _options(cls: type, given: dict[str, Any], what: str, **fixed: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ConfigError(f"{what}: unknown option(s) {', '.join(unknown)} "
                          f"(expected: {', '.join(sorted(names - set(fixed)))})")
    return cls(**given, **fixed)


def assemble(manifest: str = "flickr_style", out: str | os.PathLike = "data/flickr_style", *,
             images: int = -1, seed: int = 0, labels: int = 0, mirror: str | None = None,
             **options: Any) -> Any:
    """Download a manifest's images and write train.txt / test.txt (``datakit assemble``).

    ``manifest``: a recipe name (``flickr_style``, ``demo``) or a CSV path; ``out``: the
    folder; ``images``: how many (-1 all); ``seed``: the subset's seed (Caffe's 0);
    ``labels``: keep labels < K (0 all); ``mirror``: fetch every URL from this local
    mirror (``http://127.0.0.1:PORT``). Other options: the rest of AssembleConfig
    (``rewrite``, ``absolute_paths``, ``report``, ``retry_failed``, ``dead_after``,
    ``partition_size``, ``url_column``, ``label_column``, ``split_column``, ``cache_dir``,
    ``progress``) and of DownloadOptions (``concurrency``, ``per_host``, ``timeout``,
    ``read_timeout``, ``retries``, ``backoff``, ``max_bytes``, ``max_pixels``,
    ``max_redirects``, ``resize``, ``resize_mode``, ``workers``, ``fsync``).
    Returns an AssembleResult (``.lists`` the list files, ``.report`` the counts);
    resumable: call again after an interruption.
    """
    from datakit.assemble import AssembleConfig
    from datakit.assemble import assemble as run
    from datakit.download import DownloadOptions
    dl_names = {f.name for f in dataclasses.fields(DownloadOptions)}
    dl = _options(DownloadOptions, {k: v for k, v in options.items() if k in dl_names}, "datakit.assemble")
    rest = {k: v for k, v in options.items() if k not in dl_names}
    if "report" in rest and rest["report"] is not None:
        rest["report"] = Path(rest["report"])
    cfg = _options(AssembleConfig, dict(manifest=str(manifest), out=Path(out), images=images, seed=seed,
                                        labels=labels, mirror=mirror, **rest), "datakit.assemble", options=dl)
    return run(cfg)


def convert(root: str | os.PathLike, list_file: str | os.PathLike, db: str | os.PathLike, *,
            backend: str = "lmdb", resize_height: int = 0, resize_width: int = 0, shuffle: bool = False,
            encoded: bool = False, **options: Any) -> Any:
    """Convert a Caffe image list under ``root`` into an LMDB / LevelDB / HDF5 database (``datakit convert``).

    Options as convert_imageset's: ``backend`` (lmdb, leveldb, hdf5), ``resize_height`` /
    ``resize_width`` (0 keeps the size; give both), ``gray``, ``shuffle`` (with ``seed``),
    ``encoded`` (with ``encode_type``), ``check_size``; and ours: ``hdf5_chunk``,
    ``allow_absolute``, ``workers`` (0 all cores), ``commit_every``, ``checkpoint_every``,
    ``strict``, ``resume``, ``overwrite``, ``progress``. Returns a ConvertSummary
    (``.written``, ``.skipped``, ``.line()``); an interrupted call resumes with ``resume=True``.
    """
    from datakit.convert import ConvertOptions
    from datakit.convert import convert as run
    opts = _options(ConvertOptions, dict(backend=backend, resize_height=resize_height, resize_width=resize_width,
                                         shuffle=shuffle, encoded=encoded, **options), "datakit.convert")
    return run(root, list_file, db, opts)


def mean(db: str | os.PathLike, out: str | os.PathLike | None = None, *, backend: str | None = None,
         workers: int = 0, npy: bool = False, progress: bool | None = None) -> Any:
    """The per-pixel mean image of a database (``datakit mean DB OUT``; Caffe's compute_image_mean).

    Writes ``out`` when given (``.npy``: float32 C×H×W; anything else: Caffe's
    .binaryproto; ``npy=True`` also writes the .npy twin). Returns a MeanResult:
    ``.mean`` (C×H×W), ``.per_channel`` (what ``mean_value`` takes), ``.count``.
    """
    from datakit.mean import compute_mean, save_mean
    result = compute_mean(db, backend, workers=workers, progress=progress)
    if out is not None:
        save_mean(result, out, also_npy=npy)
    return result


def inspect(db: str | os.PathLike, *, backend: str | None = None, samples: int = 0) -> Any:
    """Count, shapes and label histogram of a database (``datakit inspect``).

    Returns ``(summary, samples)``: ``summary.lines()`` is what the command prints;
    ``samples`` the first records (for ``datakit.summary.write_contact_sheet``).
    """
    from datakit.summary import inspect_db
    return inspect_db(db, backend, samples=samples)


def open_db(path: str | os.PathLike, backend: str | None = None, *, decode: bool = False) -> Any:
    """A reader over a database's records in Caffe's order (see :func:`datakit.db.open_reader`)."""
    from datakit.db import open_reader
    return open_reader(path, backend, decode=decode)
