"""Background work for the data layers: a two-stage prefetch pipeline.

Why a thread: reading a database, decoding JPEGs and transforming a batch would
otherwise stall the solver every iteration. ``Prefetcher`` runs batch k+1, k+2, ...
in threads (one reading, one transforming and copying to the device) while the
solver trains on batch k.

A leaf module: it knows nothing of layers, transforms or the net, so the data
layers (``trainer/layers/base_data.py``) depend on it and it on nothing of the
trainer. ``decode_pool`` lives in ``datakit/threadpool.py``: the batch transform
(``datakit/transform.py``) and the PyTorch datasets share it.
"""

from __future__ import annotations

import queue
import threading
from typing import Any
from collections.abc import Callable

#: how many batches are prepared ahead (Caffe's PREFETCH_COUNT is 3-4).
PREFETCH_DEPTH = 3


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

    def _read_loop(self, read: Callable[[int], Any], start: int, out: queue.Queue) -> None:
        k = start
        while not self._stop.is_set():
            try:
                item: Any = ("ok", read(k))
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
        src: queue.Queue | None = None
        if self.read is not None:
            src = queue.Queue(maxsize=2)
            self._threads.append(threading.Thread(target=self._read_loop, args=(self.read, self.next_index, src),
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
