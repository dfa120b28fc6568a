"""Caffe's HDF5Output: writes the batches it is given (data and label) to an HDF5 file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datakit.errors import DatabaseError

from trainer.backend import to_host

from . import register
from .base import Blob, Layer

DATASETS = ("data", "label")  # Caffe's HDF5_DATA_DATASET_NAME, HDF5_DATA_LABEL_NAME


@register("HDF5Output")
class HDF5OutputLayer(Layer):
    """Two bottoms, no top: each forward appends bottom 0 to dataset ``data`` and bottom 1 to ``label``.

    ``hdf5_output_param.file_name`` is created (truncated) at setup, relative to the working
    directory as in Caffe, and flushed after every batch, so the rows of an interrupted run are
    on disk. Caffe rewrites both datasets on each forward (which its HDF5 library refuses after
    the first batch); appending keeps every batch, in order, readable by HDF5Data. No gradient.
    """

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 0

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        import h5py
        name = self.param.hdf5_output_param.file_name
        if not name:
            raise self.error("hdf5_output_param.file_name is required")
        self.path = Path(self.base_dir) / name
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: Any = h5py.File(self.path, "w")
        except OSError as err:
            raise DatabaseError(f"layer {self.name}: cannot create {self.path}: {err} (if another net, the TEST "
                                "net say, writes it too, give each phase its own file_name)") from None
        self.rows = 0

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        if bottoms[0].shape[:1] != bottoms[1].shape[:1]:
            raise self.error(f"bottoms have {bottoms[0].shape[:1]} and {bottoms[1].shape[:1]} rows; they must match")

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        if self._file is None:
            raise self.error(f"{self.path} is closed")
        for name, blob in zip(DATASETS, bottoms):
            arr = np.asarray(to_host(blob.data), dtype=np.float32)
            arr = arr.reshape((1,) + arr.shape) if arr.ndim == 0 else arr
            if name not in self._file:
                self._file.create_dataset(name, data=arr, maxshape=(None,) + arr.shape[1:], chunks=True)
                continue
            ds = self._file[name]
            if ds.shape[1:] != arr.shape[1:]:
                raise self.error(f"bottom {blob.name} rows are {arr.shape[1:]}, earlier batches' {ds.shape[1:]}")
            ds.resize(ds.shape[0] + arr.shape[0], axis=0)
            ds[-arr.shape[0]:] = arr
        self.rows += int(bottoms[0].shape[0]) if bottoms[0].shape else 1
        self._file.flush()

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        pass

    def close(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None
