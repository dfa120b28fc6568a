"""PyTorch datasets over Caffe databases: LMDB / LevelDB Datums (raw or encoded) and HDF5.

Two classes, both yielding ``(image, label)`` with the image a float32 C×H×W tensor and
the label an int:

* :class:`CaffeDataset`, a map-style ``Dataset`` (random access, works with any sampler);
* :class:`CaffeIterableDataset`, an ``IterableDataset`` that streams the database in key
  order, each DataLoader worker reading the whole database once and keeping only its
  own batches (no key list in memory).

The optional Caffe transform (``crop_size`` / ``mirror`` / ``mean_file`` / ``mean_value`` /
``scale``, as in a ``transform_param``) runs through the trainer's own
:class:`datakit.transform.Transformer`, and the random crops and flips are drawn the way
the trainer's Data layer draws them: item ``p`` of the sequence belongs to batch
``k = p // batch_size``, reads record ``(skip + p) % len(db)`` and takes its crop offsets
and flip from ``numpy.random.default_rng([seed, k])``. With the DataLoader's
``batch_size`` equal to the dataset's and ``shuffle=False``, batch ``k`` of the loader is
therefore batch ``k`` of ``trainer fit``'s Data layer, bit for bit, whatever the number of
workers (the iterable dataset gives worker ``w`` of ``W`` the batches ``w, w+W, ...``,
which the DataLoader hands out round-robin: the same order). :func:`trainer_seed` gives
the seed a Data layer uses for a solver's ``random_seed``; :meth:`CaffeDataset.from_net`
reads source, batch size, transform and ``rand_skip`` from a net prototxt.

Workers: every process opens its own database handle on first use (handles never
cross a fork). LevelDB lets only one process open a database at a time, so a LevelDB
read by more than one DataLoader worker raises :class:`datakit.errors.DatabaseError`
saying so (use ``num_workers=1``, or convert to LMDB); we do not copy the database.

Import cost: this module imports torch; ``import datakit`` does not import this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import Dataset, IterableDataset, get_worker_info
except ImportError as _err:  # pragma: no cover - exercised only without torch
    raise ImportError("datakit.torch needs PyTorch: pip install 'datakit[torch]'") from _err

from datakit.formats.datum import datum_to_array, parse_datum_fields
from datakit.db import detect_backend
from datakit.db.shared import acquire_reader, release_reader
from datakit.errors import ConfigError, DatabaseError
from datakit.formats import caffe_pb2

__all__ = ["CaffeDataset", "CaffeIterableDataset", "trainer_seed", "transform_param"]

_PHASES = {"train": caffe_pb2.TRAIN, "test": caffe_pb2.TEST}


def trainer_seed(random_seed: int) -> int:
    """The transform seed of a net's first data layer when the solver's ``random_seed`` is given.

    A Net draws one seed per data layer from ``default_rng(random_seed)`` as it sets the layers up
    in order; the first data layer (every Caffe train_val net starts with one) gets the first draw.
    A TEST net is built with ``random_seed + 1 + i`` for test net ``i``.
    """
    return int(np.random.default_rng(random_seed).integers(0, 2**63 - 1))


def transform_param(spec: caffe_pb2.TransformationParameter | dict | str | None) -> caffe_pb2.TransformationParameter:
    """A TransformationParameter from a message, a dict of its fields or prototxt text.

    ``{"crop_size": 227, "mirror": True, "mean_file": "mean.binaryproto"}`` and
    ``'crop_size: 227 mirror: true mean_value: 104'`` mean the same as in a prototxt.
    """
    if spec is None:
        return caffe_pb2.TransformationParameter()
    if isinstance(spec, caffe_pb2.TransformationParameter):
        return spec
    if isinstance(spec, str):
        from google.protobuf import text_format
        msg = caffe_pb2.TransformationParameter()
        try:
            text_format.Parse(spec, msg)
        except text_format.ParseError as err:
            raise ConfigError(f"transform: {err}") from None
        return msg
    msg = caffe_pb2.TransformationParameter()
    for name, value in dict(spec).items():
        if name not in msg.DESCRIPTOR.fields_by_name:
            raise ConfigError(f"transform: unknown field {name!r} (expected a transform_param field: crop_size, "
                              "mirror, mean_file, mean_value, scale, force_color, force_gray)")
        if name == "mean_value":
            msg.mean_value.extend(float(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        else:
            setattr(msg, name, value)
    return msg


class _Records:
    """Picklable access to one database's records; each process opens its own handle lazily."""

    def __init__(self, path: Path, backend: str, color: bool | None) -> None:
        self.path = path
        self.backend = backend
        self.color = color
        self._pid = -1
        self._reader: Any = None
        self._h5: list[Any] = []

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_pid=-1, _reader=None, _h5=[])
        return state

    def check_processes(self) -> None:
        info = get_worker_info()
        if self.backend == "leveldb" and info is not None and info.num_workers > 1:
            raise DatabaseError(f"{self.path}: LevelDB allows one process at a time, and this DataLoader has "
                                f"{info.num_workers} workers; use num_workers=0 or 1, or convert the images "
                                "to LMDB (datakit convert --backend lmdb)")

    def reader(self) -> Any:
        if self._pid != os.getpid():
            self.check_processes()
            self._reader = acquire_reader(self.path, self.backend)
            self._pid = os.getpid()
        return self._reader

    def close(self) -> None:
        if self._reader is not None and self._pid == os.getpid():
            release_reader(self.path, self.backend)
        for f in self._h5:
            f.close()
        self._reader, self._h5, self._pid = None, [], -1

    def decode(self, key: bytes, value: bytes | memoryview) -> tuple[np.ndarray, int]:
        """As the trainer's Data layer: raw pixels as stored, encoded ones decoded with `color`."""
        where = f"{self.path}: record {key.decode('utf-8', 'backslashreplace')!r}"
        fields = parse_datum_fields(value, where)
        color = self.color if fields.encoded else True
        return datum_to_array(fields, color=color, where=where), fields.label

    # -- HDF5 -------------------------------------------------------------------------------
    def hdf5_tables(self) -> list[tuple[Any, Any, int]]:
        """(data, label, rows) per HDF5 file, opened in this process."""
        if self._pid != os.getpid() or not self._h5:
            import h5py
            from datakit.db.hdf5_backend import hdf5_files
            self._h5 = [h5py.File(f, "r") for f in hdf5_files(self.path)]
            self._pid = os.getpid()
        out = []
        for f in self._h5:
            if "data" not in f:
                raise DatabaseError(f"{f.filename}: no 'data' dataset (Caffe's HDF5Data reads 'data' and 'label')")
            out.append((f["data"], f.get("label"), int(f["data"].shape[0])))
        return out


class _CaffeSequence:
    """What both datasets share: the record order, the transform and its random plan."""

    def __init__(self, source: str | os.PathLike, *, transform: Any = None, phase: str | int = "train",
                 batch_size: int = 1, seed: int = 0, skip: int = 0, num_samples: int | None = None,
                 backend: str | None = None, base_dir: str | os.PathLike = ".") -> None:
        from datakit.transform import Transformer
        self.source = Path(source)
        self.backend = backend or detect_backend(self.source)
        if isinstance(phase, str):
            if phase.lower() not in _PHASES:
                raise ConfigError(f"phase must be 'train' or 'test', got {phase!r}")
            phase = _PHASES[phase.lower()]
        self.phase = int(phase)
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.skip = int(skip)
        tp = transform_param(transform)
        self.transformer = Transformer(tp, self.phase, base_dir=base_dir, where="transform")
        color = False if tp.force_gray else True if tp.force_color else None
        self.records = _Records(self.source, self.backend, color)
        self.num_records, self.item_shape, self._keys = self._scan()
        if self.num_records == 0:
            raise DatabaseError(f"{self.source}: the database is empty")
        if len(self.item_shape) == 3:
            self.out_shape: tuple[int, ...] = self.transformer.output_shape(*self.item_shape)
        elif not self.transformer.is_identity:
            raise ConfigError(f"{self.source}: records are {self.item_shape}, not C×H×W images; drop the transform")
        else:
            self.out_shape = self.item_shape
        self.num_samples = self.num_records if num_samples is None else int(num_samples)
        self._plan_cache: tuple[int, Any] | None = None

    def _scan(self) -> tuple[int, tuple[int, ...], list[bytes] | None]:
        """Record count and first record's shape; LMDB / LevelDB keys are kept only when asked."""
        if self.backend == "hdf5":
            tables = self.records.hdf5_tables()
            n = sum(rows for _, _, rows in tables)
            shape = tuple(int(s) for s in tables[0][0].shape[1:]) if tables else ()
            self.records.close()
            return n, shape, None
        reader = self.records.reader()
        try:
            keys = list(reader.keys()) if self.wants_keys else None
            n = len(keys) if keys is not None else len(reader)
            first = next(iter(reader.raw_items()), None)
            shape = self.records.decode(*first)[0].shape if first is not None else ()
        finally:
            self.records.close()  # LevelDB: the main process must not keep the lock the workers need
        return n, tuple(shape), keys

    wants_keys = False

    def record_index(self, p: int) -> int:
        return (self.skip + p) % self.num_records

    def transform(self, p: int, image: np.ndarray) -> torch.Tensor:
        """Item p's image transformed as the trainer transforms it inside batch p // batch_size."""
        from datakit.transform import Plan
        t = self.transformer
        if t.is_identity or len(self.item_shape) != 3:
            return torch.from_numpy(np.array(image, dtype=np.float32))
        if image.shape != self.item_shape:
            raise DatabaseError(f"{self.source}: record {self.record_index(p)} is {'x'.join(map(str, image.shape))} "
                                f"but the first is {'x'.join(map(str, self.item_shape))} (CxHxW); a Caffe transform "
                                "needs one size: convert with --resize-height/--resize-width")
        k, j = divmod(p, self.batch_size)
        if self._plan_cache is None or self._plan_cache[0] != k:
            _, h, w = self.item_shape
            self._plan_cache = (k, t.plan(self.batch_size, h, w, np.random.default_rng([self.seed, k])))
        plan = self._plan_cache[1]
        one = Plan(plan.h_off[j:j + 1], plan.w_off[j:j + 1], plan.mirror[j:j + 1])
        return torch.from_numpy(t.apply(image[None], one)[0])

    def __len__(self) -> int:
        return self.num_samples

    def close(self) -> None:
        """Give back this dataset's use of the process's shared reader (reopened on the next read).

        Datasets and trainer Data layers in one process share one reader per database
        (datakit.db.shared); the last user's close closes it.
        """
        self.records.close()

    def __del__(self) -> None:
        try:
            self.records.close()
        except Exception:
            pass


class CaffeDataset(_CaffeSequence, Dataset):
    """Random access to a Caffe database as ``(float32 C×H×W tensor, int label)`` items.

    ``source``: an LMDB / LevelDB folder or an HDF5 file, list or folder (detected, or give
    ``backend``). ``transform``: a transform_param (message, dict or prototxt text; None =
    the pixels as float32). ``phase``: 'train' draws random crops / flips, 'test' takes the
    centre crop and never flips (as the trainer). ``batch_size``, ``seed`` and ``skip`` fix
    which random crop / flip item ``p`` gets and which record it reads (see the module
    docstring); ``num_samples`` (default: one pass over the records) may exceed the record
    count: item ``p`` reads record ``(skip + p) % len(db)``, as the trainer wraps, and every
    pass draws new crops. ``base_dir``: where a relative ``mean_file`` is found.
    """

    wants_keys = True

    def __getitem__(self, p: int) -> tuple[torch.Tensor, int]:
        if not 0 <= p < self.num_samples:
            raise IndexError(f"index {p} out of range for {self.num_samples} samples")
        i = self.record_index(int(p))
        if self.backend == "hdf5":
            image, label = self._hdf5_item(i)
        else:
            assert self._keys is not None  # _scan lists the keys of every key-value backend
            key = self._keys[i]
            item = next(self.records.reader().raw_items(start=key), None)
            if item is None or item[0] != key:
                raise DatabaseError(f"{self.source}: record {key!r} disappeared (was the database rewritten?)")
            image, label = self.records.decode(*item)
        return self.transform(int(p), image), label

    def _hdf5_item(self, i: int) -> tuple[np.ndarray, int]:
        for data, label, rows in self.records.hdf5_tables():
            if i < rows:
                lab = int(np.asarray(label[i]).reshape(-1)[0]) if label is not None else 0
                return np.asarray(data[i], dtype=np.float32), lab
            i -= rows
        raise IndexError(i)

    @classmethod
    def from_net(cls, net_prototxt: str | os.PathLike, *, phase: str = "train", layer: str | None = None,
                 random_seed: int = 0, iterations: int | None = None, base_dir: str | os.PathLike = ".") -> CaffeDataset:
        """The dataset a net's Data layer reads, with the seed and ``rand_skip`` it would draw.

        ``layer``: the Data layer's name (default: the first Data layer of that phase).
        ``random_seed``: the solver's (for a TEST net give the one the trainer uses,
        ``random_seed + 1 + test net index``). ``iterations``: the length in batches
        (default: one pass over the records). ``base_dir``: what relative ``source`` and
        ``mean_file`` paths are relative to (the working directory, as for Caffe and ``trainer fit``).
        """
        return cls(**_from_net_kwargs(net_prototxt, phase, layer, random_seed, iterations, base_dir))


class CaffeIterableDataset(_CaffeSequence, IterableDataset):
    """Stream a Caffe database in key order, sharded by DataLoader worker (same arguments as CaffeDataset).

    Worker ``w`` of ``W`` yields the items of batches ``w, w + W, ...``; give the DataLoader
    the same ``batch_size`` so it reassembles the trainer's batch order. Each worker makes
    one sequential pass per pass over the database and skips other workers' records
    without decoding them.
    """

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.records.check_processes()
        b = self.batch_size
        p = 0
        for key, value in self._endless():
            if p >= self.num_samples:
                break
            if (p // b) % workers == wid:
                image, label = value if key is None else self.records.decode(key, value)
                yield self.transform(p, image), label
            p += 1

    def _endless(self) -> Iterator[tuple[Any, Any]]:
        """(key, value) from record ``skip``, wrapping at the end; HDF5 gives (None, (image, label))."""
        start = self.skip % self.num_records
        while True:
            for i, item in enumerate(self._pass()):
                if i >= start:
                    yield item
            start = 0

    def _pass(self) -> Iterator[tuple[Any, Any]]:
        if self.backend == "hdf5":
            for data, label, rows in self.records.hdf5_tables():
                for r in range(rows):
                    lab = int(np.asarray(label[r]).reshape(-1)[0]) if label is not None else 0
                    yield None, (np.asarray(data[r], dtype=np.float32), lab)
            return
        reader = self.records.reader()
        scan = getattr(reader, "scan", None)   # LMDB: zero-copy views, read before the next item
        yield from scan(buffers=True) if scan is not None else reader.raw_items()

    @classmethod
    def from_net(cls, net_prototxt: str | os.PathLike, *, phase: str = "train", layer: str | None = None,
                 random_seed: int = 0, iterations: int | None = None,
                 base_dir: str | os.PathLike = ".") -> CaffeIterableDataset:
        """As :meth:`CaffeDataset.from_net`, streaming."""
        return cls(**_from_net_kwargs(net_prototxt, phase, layer, random_seed, iterations, base_dir))


def _from_net_kwargs(net_prototxt: str | os.PathLike, phase: str, layer: str | None, random_seed: int,
                     iterations: int | None, base_dir: str | os.PathLike) -> dict:
    from datakit.formats.prototxt import read_net
    path = Path(net_prototxt)
    net = read_net(path)
    want = _PHASES.get(phase.lower())
    if want is None:
        raise ConfigError(f"phase must be 'train' or 'test', got {phase!r}")
    for lp in net.layer:
        if lp.type != "Data" or (layer is not None and lp.name != layer):
            continue
        phases = {r.phase for r in lp.include if r.HasField("phase")}
        if phases and want not in phases:
            continue
        p = lp.data_param
        rng = np.random.default_rng(random_seed)
        seed = int(rng.integers(0, 2**63 - 1))
        skip = int(rng.integers(0, p.rand_skip)) if p.rand_skip else 0  # the Data layer's draw: 0 .. rand_skip-1
        return dict(source=Path(base_dir) / p.source, transform=lp.transform_param, phase=want,
                    batch_size=int(p.batch_size), seed=seed, skip=skip, base_dir=base_dir,
                    num_samples=None if iterations is None else iterations * int(p.batch_size))
    which = f"named {layer!r}" if layer else f"in the {phase.upper()} phase"
    raise ConfigError(f"{path}: no Data layer {which}")
