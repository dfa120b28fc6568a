"""The prefetching base of the data layers that read a source (Caffe's base_data_layer.cpp).

``PrefetchingDataLayer`` is the base of Data, ImageData, HDF5Data and MemoryData.
A subclass implements ``open_source()`` and ``read_batch(k)``; the base class
owns the ``Transformer`` (a leaf class with no layer knowledge), a
``Prefetcher`` that reads batch k+1, k+2, ... in threads while the net trains on
batch k, the hand-over of each batch to the tops, and the layer's snapshot state.

Why batches are a pure function of their number: batch ``k`` always holds the
same records with the same random crops/mirrors (the transform draws from a
Generator seeded by ``(layer seed, k)``). The only state a data layer has is
how many batches the net has consumed, so a snapshot stores one integer per
data layer and a resumed run sees exactly the batches the uninterrupted run
would have, however far ahead the prefetcher had run.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np

from trainer.prefetch import PREFETCH_DEPTH, Prefetcher
from trainer.rails import longest_label_run
from datakit.transform import Transformer, transformer_for

from .base import Blob, Layer


@dataclass
class HostBatch:
    """What a source reads for batch k: stacked images (N×C×H×W), labels, record names."""

    data: np.ndarray
    labels: np.ndarray | None
    keys: list[str]
    extra: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ReadyBatch:
    """A batch on the device, transformed, ready to be copied into the tops."""

    index: int
    data: Any
    labels: Any
    host_labels: np.ndarray | None
    keys: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


class PrefetchingDataLayer(Layer):
    """Base of Data / ImageData / HDF5Data / MemoryData: prefetching, transforms, state, rails.

    Subclasses implement ``open_source()`` (sets ``batch_size``, returns the per-item
    C×H×W shape and the number of records) and ``read_batch(k) -> HostBatch``, whose
    result must be a function of ``k`` alone (it runs in the prefetch thread, ahead of
    the net, and a resumed run asks again for the batches the snapshot did not consume).
    Tops: data, then label.
    """

    is_data = True
    min_bottoms = max_bottoms = 0
    min_tops = 1
    max_tops: int | None = 2   # subclasses with any number of tops (HDF5Data) set None
    transforms = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumed = 0            # batches handed to the net: the layer's whole state
        self.batch_size = 0
        self.seed = 0
        self.transformer: Transformer | None = None
        self.prefetcher: Prefetcher | None = None
        self._held: collections.deque = collections.deque()  # (arrays, event): see hold_until_used
        self._ring: list[np.ndarray] | None = None            # see _ring_buffer
        #: the database folder or list file records come from (subclasses set it in open_source)
        self.source: Path | None = None
        self.item_shape: tuple[int, ...] = ()
        self.out_shape: tuple[int, ...] = ()
        self.num_records = 0
        self.last_keys: list[str] = []

    # -- for subclasses ---------------------------------------------------------------------
    def open_source(self) -> tuple[tuple[int, ...], int]:
        raise NotImplementedError

    def read_batch(self, k: int) -> HostBatch:
        raise NotImplementedError

    @property
    def source_name(self) -> str:
        return "" if self.source is None else str(self.source)

    def source_label_sample(self) -> list[int]:
        """Labels of the first records in reading order (for the long-run warning)."""
        return []

    def shuffled(self) -> bool:
        return False

    # -- Layer ---------------------------------------------------------------------------------
    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self.seed = int(self.rng.integers(0, 2**63 - 1))
        if self.transforms:
            self.transformer = transformer_for(self.param, self.phase, self.base_dir)
        self.item_shape, self.num_records = self.open_source()
        if self.batch_size <= 0:
            raise self.error(f"batch_size must be positive, got {self.batch_size}")
        if self.num_records <= 0:
            raise self.error("the data source is empty")
        if self.transformer is not None and len(self.item_shape) == 3:
            self.out_shape = self.transformer.output_shape(*self.item_shape)
        else:
            self.out_shape = tuple(self.item_shape)
        self.check_label_runs()

    def check_label_runs(self) -> None:
        if self.shuffled() or self.phase != 0:
            return
        labels = self.source_label_sample()
        length, label, first = longest_label_run(labels)
        if length >= max(4 * self.batch_size, 100):
            self.log_warning(
                f"layer {self.name}: {length} consecutive records from position {first} all have label "
                f"{label}; this source is read in order, so whole batches hold one class and training "
                f"may not converge: shuffle when converting (datakit convert --shuffle)")

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        tops[0].reshape((self.batch_size, *self.out_shape))
        if len(tops) > 1:
            tops[1].reshape((self.batch_size,))

    def make_batch(self, k: int, host: HostBatch | None = None) -> ReadyBatch:
        """Move batch k to the device and transform it (the prefetch pipeline's second stage)."""
        if host is None:
            host = self.read_batch(k)
        xp = self.xp
        if self.transformer is not None and host.data.ndim == 4 and not self.transformer.is_identity:
            n, _, h, w = host.data.shape
            plan = self.transformer.plan(n, h, w, np.random.default_rng([self.seed, k]))
            data = self.transformer.apply(xp.asarray(host.data), plan, xp, out=self._ring_buffer(k, n))
        else:
            data = xp.asarray(host.data, dtype=np.float32)
        labels = None if host.labels is None else xp.asarray(host.labels.astype(np.float32))
        extra = {name: xp.asarray(arr, dtype=np.float32) for name, arr in host.extra.items()}
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()
        return ReadyBatch(k, data, labels, host.labels, host.keys, extra)

    def _ring_buffer(self, k: int, n: int) -> Any:
        """A reused output array for batch k (NumPy): a fresh batch-sized array each batch costs page faults.

        RING buffers rotate; batch k's buffer is rewritten for batch k + RING, which the producer
        can only start once the net has taken batch k + RING - PREFETCH_DEPTH - 1, i.e. two
        forwards after batch k left the top blob. CuPy has its own memory pool: None there.
        """
        if self.xp is not np:
            return None
        shape = (n, *self.out_shape)
        ring = self._ring
        if ring is None or ring[0].shape != shape:
            ring = self._ring = [np.empty(shape, np.float32) for _ in range(PREFETCH_DEPTH + 3)]
        return ring[k % len(ring)]

    def _device_id_hook(self) -> Callable[[], None] | None:
        if self.xp is np:
            return None
        dev_id = self.xp.cuda.Device().id
        xp = self.xp

        def start() -> None:
            xp.cuda.Device(dev_id).use()
            xp.cuda.Stream(non_blocking=True).use()
        return start

    def next_batch(self) -> ReadyBatch:
        if self.prefetcher is None:
            self.prefetcher = Prefetcher(self.make_batch, self.consumed, name=f"prefetch-{self.name}",
                                         on_thread_start=self._device_id_hook(), read=self.read_batch)
        batch = self.prefetcher.get()
        self.consumed += 1
        return batch

    def hold_until_used(self, batch: ReadyBatch) -> None:
        """CuPy: keep `batch`'s device arrays alive until the kernels queued so far have run.

        The arrays were allocated on the prefetch thread's stream, so CuPy's
        memory pool gives their blocks back to that stream when they are
        freed, and the next batch's copy may be written into them at once,
        while this stream may still be running kernels that read them (the
        first layer's backward reads its input; the label copy reads the
        labels). An event recorded on this stream now says when those kernels
        are done; a batch is freed only after its event, so nothing is
        overwritten early.
        """
        if self.xp is np:
            return
        arrays = (batch.data, batch.labels, *batch.extra.values())
        self._held.append((arrays, self.xp.cuda.get_current_stream().record()))
        while self._held and (self._held[0][1].done or len(self._held) > PREFETCH_DEPTH + 2):
            self._held[0][1].synchronize()
            self._held.popleft()

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        batch = self.next_batch()
        if self.label_check is not None and batch.host_labels is not None:
            self.label_check(batch.host_labels, batch.keys)
        self.last_keys = batch.keys
        # Hand the prepared array over rather than copying it (layers replace top arrays freely).
        tops[0].data = batch.data.reshape(tops[0].shape)
        if len(tops) > 1 and batch.labels is not None:
            tops[1].data[...] = batch.labels.reshape(tops[1].shape)
        self.hold_until_used(batch)

    def backward(self, tops: list[Blob], propagate_down: list[bool], bottoms: list[Blob]) -> None:
        return

    # -- resume -----------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        self.consumed = int(state["consumed"])
        self.seed = int(state.get("seed", self.seed))
        if self.prefetcher is not None:
            self.prefetcher.restart(self.consumed)

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()

    def __del__(self) -> None:
        # A safety net for layers nobody closed (Net.close is the real path). It can run at
        # interpreter exit, when the modules close() needs may already be torn down, so any
        # error here is dropped: there is no caller left to report it to.
        try:
            self.close()
        except Exception:
            pass
