"""A MemoryData layer: batches from arrays the program hands over (Caffe's MemoryDataLayer).

``memory_data_param`` gives batch_size, channels, height, width; call
``layer.reset(data, labels)`` (N×C×H×W, N) before the first forward, as Caffe's
``Reset``. Rows are served in order and wrap around. Unlike Caffe's Reset path,
``transform_param`` is applied when present (Caffe applies it only to AddMatVector),
so an array input can be cropped and mean-subtracted like a database.
"""

from __future__ import annotations

import numpy as np

from datakit.errors import ConfigError

from trainer.layers import register
from trainer.layers.base_data import HostBatch, PrefetchingDataLayer


@register("MemoryData")
class MemoryDataLayer(PrefetchingDataLayer):
    def open_source(self) -> tuple[tuple[int, ...], int]:
        p = self.param.memory_data_param
        self.batch_size = int(p.batch_size)
        shape = (int(p.channels), int(p.height), int(p.width))
        if min(shape) <= 0:
            raise ConfigError(f"layer {self.name}: memory_data_param needs channels, height and width > 0")
        self.arrays: tuple[np.ndarray, np.ndarray] | None = None
        return shape, 1

    def reset(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Serve ``data`` (N×C×H×W) and ``labels`` (N) from now on, starting at row 0."""
        data = np.asarray(data)
        labels = np.asarray(labels).reshape(-1)
        if data.ndim != 4 or tuple(data.shape[1:]) != tuple(self.item_shape):
            raise ConfigError(f"layer {self.name}: reset() got data of shape {data.shape}; expected "
                              f"N x {' x '.join(map(str, self.item_shape))}")
        if len(labels) != len(data) or len(data) == 0:
            raise ConfigError(f"layer {self.name}: reset() got {len(data)} images and {len(labels)} labels")
        self.close()
        self.prefetcher = None
        self.arrays = (data, labels)
        self.num_records = len(data)
        self.consumed = 0

    def read_batch(self, k: int) -> HostBatch:
        if self.arrays is None:
            raise ConfigError(f"layer {self.name}: MemoryData has no data; call reset(data, labels) first")
        data, labels = self.arrays
        rows = (np.arange(self.batch_size) + k * self.batch_size) % len(data)
        return HostBatch(data[rows], labels[rows].astype(np.int64), [f"row {r}" for r in rows])
