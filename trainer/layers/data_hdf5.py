"""Caffe's HDF5Data layer: a text file listing .h5 files, one top per dataset name.

Each file holds datasets named like the layer's tops (``data``, ``label``, ...)
with the same first dimension. Rows are read in order across files, wrapping at
the end; ``shuffle`` permutes the file order and the rows within each file every
epoch (seeded, so a resumed run continues identically). No transform_param, as in
Caffe. One file is kept in memory at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datakit.errors import ConfigError, DatabaseError, MissingDatabase

from trainer.layers import register
from trainer.layers.base import Blob
from trainer.layers.base_data import HostBatch, PrefetchingDataLayer


@register("HDF5Data")
class HDF5DataLayer(PrefetchingDataLayer):
    """``hdf5_data_param``: source (list of .h5 paths), batch_size, shuffle."""

    transforms = False
    max_tops = None

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self.top_names = list(self.param.top)
        super().setup(bottoms, tops)

    def open_source(self) -> tuple[tuple[int, ...], int]:
        import h5py

        from datakit.db.hdf5_backend import read_hdf5_list  # the one parser of HDF5 lists
        p = self.param.hdf5_data_param
        self.batch_size = int(p.batch_size)
        self.shuffle = bool(p.shuffle)
        list_path = Path(self.base_dir) / p.source
        if not list_path.exists():
            raise MissingDatabase(f"{list_path}: HDF5 list file not found")
        if not list_path.is_file():
            raise ConfigError(f"layer {self.name}: cannot read hdf5_data_param.source {list_path}: not a file")
        self.files = read_hdf5_list(list_path, base_dir=Path(self.base_dir))
        self.rows: list[int] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        for f in self.files:
            try:
                with h5py.File(f, "r") as h:
                    counts = set()
                    for name in self.top_names:
                        if name not in h:
                            raise DatabaseError(f"{f}: no dataset {name!r} (layer {self.name} has tops "
                                                f"{', '.join(self.top_names)})")
                        ds = h[name]
                        counts.add(ds.shape[0])
                        shape = tuple(ds.shape[1:])
                        if self.shapes.setdefault(name, shape) != shape:
                            raise DatabaseError(f"{f}: dataset {name!r} rows are {shape}, other files have "
                                                f"{self.shapes[name]}")
                    if len(counts) != 1:
                        raise DatabaseError(f"{f}: datasets {', '.join(self.top_names)} have different row "
                                            f"counts {sorted(counts)}")
                    self.rows.append(counts.pop())
            except OSError as err:
                raise DatabaseError(f"{f}: not a readable HDF5 file ({err})") from None
        self._cached: tuple[int, dict[str, np.ndarray]] | None = None
        self.cum = np.cumsum([0] + self.rows)
        return self.shapes[self.top_names[0]], int(self.cum[-1])

    def reshape(self, bottoms, tops) -> None:
        for name, top in zip(self.top_names, tops):
            top.reshape((self.batch_size, *self.shapes[name]))

    def _file(self, index: int) -> dict[str, np.ndarray]:
        import h5py
        if self._cached is None or self._cached[0] != index:
            with h5py.File(self.files[index], "r") as h:
                self._cached = (index, {n: np.asarray(h[n], dtype=np.float32) for n in self.top_names})
        return self._cached[1]

    def _locate(self, position: int) -> tuple[int, int]:
        epoch, p = divmod(position, int(self.cum[-1]))
        if not self.shuffle:
            f = int(np.searchsorted(self.cum, p, side="right") - 1)
            return f, p - int(self.cum[f])
        rng = np.random.default_rng([self.seed, 2, epoch])
        file_order = rng.permutation(len(self.files))
        counts = np.cumsum([0] + [self.rows[i] for i in file_order])
        j = int(np.searchsorted(counts, p, side="right") - 1)
        f = int(file_order[j])
        row_order = np.random.default_rng([self.seed, 3, epoch, f]).permutation(self.rows[f])
        return f, int(row_order[p - int(counts[j])])

    def read_batch(self, k: int) -> HostBatch:
        start = k * self.batch_size
        cols: dict[str, list[np.ndarray]] = {n: [] for n in self.top_names}
        keys = []
        for i in range(self.batch_size):
            f, row = self._locate(start + i)
            arrays = self._file(f)
            for n in self.top_names:
                cols[n].append(arrays[n][row])
            keys.append(f"{self.files[f]} row {row}")
        stacked = {n: np.stack(v).astype(np.float32) for n, v in cols.items()}
        first = self.top_names[0]
        label = stacked.get("label")
        labels = label.reshape(-1).astype(np.int64) if label is not None and label.size == self.batch_size else None
        extra = {n: a for n, a in stacked.items() if n != first}
        return HostBatch(stacked[first], labels, keys, extra)

    def forward(self, bottoms, tops) -> None:
        batch = self.next_batch()
        if self.label_check is not None and batch.host_labels is not None:
            self.label_check(batch.host_labels, batch.keys)
        self.last_keys = batch.keys
        tops[0].data[...] = batch.data
        for name, top in zip(self.top_names[1:], tops[1:]):
            top.data[...] = batch.extra[name].reshape(top.shape)
        self.hold_until_used(batch)
