"""Caffe's ImageData layer: an image list (``path label`` lines) under a root folder.

Images are read and decoded in the decode pool, resized to new_height×new_width
when both are given (Caffe's cv::resize, INTER_LINEAR), then transformed like any
other data layer. ``shuffle`` reorders the list at every epoch, as Caffe does; the
order of epoch e is a permutation seeded by (layer seed, e), so a resumed run
continues the same order. Paths in the list cannot escape the root folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datakit.errors import ConfigError, ImageError
from datakit.imagelist import iter_list, safe_join
from datakit.images import hwc_to_chw, read_image, resize_exact

from trainer.layers import register
from trainer.layers.base_data import HostBatch, PrefetchingDataLayer
from datakit.threadpool import decode_pool


@register("ImageData")
class ImageDataLayer(PrefetchingDataLayer):
    """``image_data_param``: source, root_folder, batch_size, shuffle, new_height/new_width, is_color."""

    def open_source(self) -> tuple[tuple[int, ...], int]:
        p = self.param.image_data_param
        self.batch_size = int(p.batch_size)
        if (p.new_height > 0) != (p.new_width > 0):
            raise ConfigError(f"layer {self.name}: give both new_height and new_width, or neither "
                              f"(got {p.new_height}x{p.new_width})")
        self.new_hw = (int(p.new_height), int(p.new_width))
        self.is_color = bool(p.is_color)
        self.list_path = self.source = Path(self.base_dir) / p.source
        self.root = Path(self.base_dir) / p.root_folder if p.root_folder else Path(self.base_dir)
        self.entries = [(e.path, e.label, e.line) for e in iter_list(self.list_path)]
        if not self.entries:
            raise ConfigError(f"{self.list_path}: the image list is empty")
        self.shuffle = bool(p.shuffle)
        # Caffe: caffe_rng_rand() % rand_skip, so 0 .. rand_skip - 1 records (rand_skip itself never)
        self.skip = int(self.rng.integers(0, p.rand_skip)) if p.rand_skip else 0
        self._orders: dict[int, np.ndarray] = {}
        first = self._load(0)
        return first.shape, len(self.entries)

    def shuffled(self) -> bool:
        return self.shuffle

    def source_label_sample(self) -> list[int]:
        return [label for _, label, _ in self.entries[:5000]]

    def _order(self, epoch: int) -> np.ndarray | None:
        if not self.shuffle:
            return None
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.entries))
        return self._orders[epoch]

    def _entry_at(self, position: int) -> int:
        epoch, i = divmod(position, len(self.entries))
        order = self._order(epoch)
        return int(order[i]) if order is not None else i

    def _load(self, index: int) -> np.ndarray:
        path, _, line = self.entries[index]
        full = safe_join(self.root, path)
        try:
            img = read_image(str(full), color=self.is_color)
        except ImageError as err:
            raise ImageError(f"{self.list_path}:{line}: {err}") from None
        return hwc_to_chw(resize_exact(img, *self.new_hw))

    def read_batch(self, k: int) -> HostBatch:
        start = self.skip + k * self.batch_size
        indices = [self._entry_at(start + i) for i in range(self.batch_size)]
        images = list(decode_pool().map(self._load, indices))
        data = np.empty((len(indices), *self.item_shape), dtype=np.uint8)
        for i, (idx, img) in enumerate(zip(indices, images)):
            if img.shape != self.item_shape:
                path, _, line = self.entries[idx]
                raise ImageError(f"{self.list_path}:{line}: {path} is {'x'.join(map(str, img.shape))} (CxHxW) "
                                 f"but the first image is {'x'.join(map(str, self.item_shape))}; set "
                                 f"new_height/new_width so every image has one size")
            data[i] = img
        labels = np.array([self.entries[i][1] for i in indices], dtype=np.int64)
        keys = [f"{self.list_path}:{self.entries[i][2]} {self.entries[i][0]}" for i in indices]
        return HostBatch(data, labels, keys)
