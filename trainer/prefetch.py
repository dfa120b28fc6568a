"""Background batch prefetching, and the base class every data layer builds on.

Why a thread: reading a database, decoding JPEGs and transforming a batch would
otherwise stall the solver every iteration. A producer thread prepares batch
k+1, k+2, ... (decoding encoded records in a small thread pool: OpenCV releases
the GIL) and copies each to the device, on its own CUDA stream under CuPy, while
the solver trains on batch k.

Why batches are a pure function of their number: batch ``k`` always holds the
same records with the same random crops/mirrors (the transform draws from a
Generator seeded by ``(layer seed, k)``). The only state a data layer has is
how many batches the net has consumed, so a snapshot stores one integer per
data layer and a resumed run sees exactly the batches the uninterrupted run
would have, however far ahead the prefetcher had run.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import numpy as np

from trainer.layers.base import Blob, Layer
from trainer.transform import Transformer, transformer_for

#: how many batches are prepared ahead (Caffe's PREFETCH_COUNT is 3-4).
PREFETCH_DEPTH = 3
#: read (stage 1) and transform (stage 2) in separate threads, so they overlap
TWO_STAGE = True

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def decode_pool() -> ThreadPoolExecutor:
    """One process-wide pool for image decoding (threads: cv2.imdecode releases the GIL)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)),
                                       thread_name_prefix="datakit-decode")
        return _pool


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


class Prefetcher:
    """Runs ``make(k)`` for k = start, start+1, ... in a thread; ``get()`` returns them in order.

    With ``read`` given the work is a two-stage pipeline: one thread runs ``read(k)`` (database
    reads, decoding) while another runs ``make(k, read_result)`` (transform, device copy) on the
    previous batch, so both kinds of work overlap.
    """

    def __init__(self, make: Callable[..., Any], start: int = 0, depth: int = PREFETCH_DEPTH,
                 name: str = "prefetch", on_thread_start: Callable[[], None] | None = None,
                 read: Callable[[int], Any] | None = None) -> None:
        self.make = make
        self.read = read
        self.depth = depth
        self.name = name
        self.on_thread_start = on_thread_start
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.next_index = start

    def _put(self, q: queue.Queue, item: Any) -> None:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue) -> Any:
        while not self._stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return ("stopped", None)

    def _read_loop(self, start: int, out: queue.Queue) -> None:
        k = start
        while not self._stop.is_set():
            try:
                item: Any = ("ok", self.read(k))
            except BaseException as err:
                item = ("error", err)
            self._put(out, item)
            if item[0] == "error":
                return
            k += 1

    def _run(self, start: int, src: queue.Queue | None) -> None:
        if self.on_thread_start is not None:
            self.on_thread_start()
        k = start
        while not self._stop.is_set():
            try:
                if src is None:
                    item: Any = ("ok", self.make(k))
                else:
                    kind, value = self._get(src)
                    if kind == "stopped":
                        return
                    if kind == "error":
                        raise value
                    item = ("ok", self.make(k, value))
            except BaseException as err:  # handed to the consumer, raised there
                item = ("error", err)
            self._put(self._queue, item)
            if item[0] == "error":
                return
            k += 1

    def start(self) -> None:
        if self._threads:
            return
        src = None
        if self.read is not None:
            src = queue.Queue(maxsize=2)
            self._threads.append(threading.Thread(target=self._read_loop, args=(self.next_index, src),
                                                  name=f"{self.name}-read", daemon=True))
        self._threads.append(threading.Thread(target=self._run, args=(self.next_index, src), name=self.name,
                                              daemon=True))
        for t in self._threads:
            t.start()

    def get(self) -> Any:
        self.start()
        kind, value = self._queue.get()
        if kind == "error":
            self.close()
            raise value
        self.next_index += 1
        return value

    def close(self) -> None:
        """Stop the threads and drop what they prepared (a restart begins at ``next_index``)."""
        self._stop.set()
        for t in self._threads:
            while t.is_alive():
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                t.join(timeout=0.05)
        self._threads = []
        self._queue = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()

    def restart(self, start: int) -> None:
        self.close()
        self.next_index = start


def longest_label_run(labels: list[int]) -> tuple[int, int, int]:
    """(length, label, first position) of the longest run of equal consecutive labels."""
    best = (0, -1, 0)
    run_start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[run_start]:
            length = i - run_start
            if length > best[0]:
                best = (length, labels[run_start], run_start)
            run_start = i
    return best


class PrefetchingDataLayer(Layer):
    """Base of Data / ImageData / HDF5Data / MemoryData: prefetching, transforms, state, rails.

    Subclasses implement ``open_source()`` (returns the per-item C×H×W shape and the
    number of records) and ``read_batch(k) -> HostBatch``. Tops: data, then label.
    """

    is_data = True
    min_bottoms = max_bottoms = 0
    min_tops, max_tops = 1, 2
    transforms = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.consumed = 0            # batches handed to the net: the layer's whole state
        self.batch_size = 0
        self.seed = 0
        self.transformer: Transformer | None = None
        self.prefetcher: Prefetcher | None = None
        self._held: collections.deque = collections.deque()  # (arrays, event): see hold_until_used
        self.label_check: Callable[[np.ndarray, list[str]], None] | None = None
        self.warn: Callable[[str], None] | None = None
        self.item_shape: tuple[int, ...] = ()
        self.num_records = 0
        self.last_keys: list[str] = []

    # -- for subclasses ---------------------------------------------------------------------
    def open_source(self) -> tuple[tuple[int, ...], int]:
        raise NotImplementedError

    def read_batch(self, k: int) -> HostBatch:
        raise NotImplementedError

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

    def log_warning(self, message: str) -> None:
        if self.warn is not None:
            self.warn(message)
        else:
            import sys
            print(f"warning: {message}", file=sys.stderr)

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
        """A reused output array for batch k (NumPy): fresh 40 MB arrays per batch cost page faults.

        RING buffers rotate; batch k's buffer is rewritten for batch k + RING, which the producer
        can only start once the net has taken batch k + RING - PREFETCH_DEPTH - 1, i.e. two
        forwards after batch k left the top blob. CuPy has its own memory pool: None there.
        """
        if self.xp is not np:
            return None
        shape = (n, *self.out_shape)
        ring = getattr(self, "_ring", None)
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
                                         on_thread_start=self._device_id_hook(),
                                         read=self.read_batch if TWO_STAGE else None)
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

    def backward(self, tops, propagate_down, bottoms) -> None:
        return

    # -- resume -----------------------------------------------------------------------------
    def get_state(self) -> dict:
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
        try:
            self.close()
        except Exception:
            pass
