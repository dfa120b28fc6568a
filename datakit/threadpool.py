"""The process-wide thread pool that decodes images and splits host transforms.

Threads, not processes: cv2.imdecode and NumPy's copies release the GIL, and the
work items (one batch's images) are too small to be worth pickling. One pool per
process, made on first use, shared by the trainer's data layers, the batch
transform and the PyTorch datasets, so that several readers in one process do not
each start a thread per core.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def decode_pool() -> ThreadPoolExecutor:
    """One process-wide pool for image decoding (at most 8 threads, one per core)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)),
                                       thread_name_prefix="datakit-decode")
        return _pool


__all__ = ["decode_pool"]
