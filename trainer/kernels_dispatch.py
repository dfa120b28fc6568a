"""Where a kernel runs: the thread split over the cores, the compiled-CPU switch, the CuPy side.

The kernels (``trainer.kernels``, ``kernels_pool``, ``kernels_lrn``) decide per call:
CuPy arrays go to ``kernels_cuda`` (imported, and its RawKernels compiled, only when
a GPU is first used); host float32/float64 arrays go to the numba loops of
``kernels_cpu`` unless ``use_compiled(False)`` (or DATAKIT_COMPILED=0) keeps the NumPy
twins; either host path splits its outer loop over the cores with ``parallel`` when
the work is large enough to pay for the threads. The knobs (``_WORKERS``,
``_MIN_SPLIT``) live here, read at each call, so tests can force the threaded path.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from collections.abc import Callable

import numpy as np

from trainer import kernels_cpu

# ------------------------------------------------------------ threading ----
# NumPy runs one thread per call outside BLAS; the kernels' slice copies release
# the GIL, so splitting them over the cores lets im2col and pooling use the
# whole CPU as the GEMMs do.
def _workers_from_env() -> int:
    """How many threads (the caller included) split a kernel's loop.

    ``DATAKIT_KERNEL_THREADS`` when it is a positive integer. Otherwise half the cores (at most
    8), or every core when the BLAS is held to one thread (``OPENBLAS_NUM_THREADS``,
    ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` = 1). Why half: the kernels run between GEMMs,
    and a multi-threaded BLAS keeps its threads on the cores for a while after each call; on
    the 2-core machines of benchmarks/RESULTS.md a LeNet and a CaffeNet step were faster with
    the kernels on the calling thread alone than split over both cores.
    """
    raw = os.environ.get("DATAKIT_KERNEL_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    cores = max(1, min(os.cpu_count() or 1, 8))
    blas_single = any(os.environ.get(v, "").strip() == "1"
                      for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"))
    return cores if blas_single else max(1, cores // 2)


_WORKERS = _workers_from_env()
_POOL: ThreadPoolExecutor | None = None
_MIN_SPLIT = 1 << 18  # elements below which threads cost more than they save


def parallel(total: int, work: int, fn: Callable[[int, int], None]) -> None:
    """Run ``fn(lo, hi)`` over [0, total) in contiguous chunks, one per core when ``work`` is large."""
    global _POOL
    parts = min(_WORKERS, total) if work >= _MIN_SPLIT else 1
    if parts <= 1:
        fn(0, total)
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_WORKERS, thread_name_prefix="kernels")
    bounds = [total * k // parts for k in range(parts + 1)]
    # The caller works too: it runs the first chunk, then takes back every chunk no worker has
    # started (cancel() succeeds only then). On a busy machine a worker may not be scheduled for
    # milliseconds; waiting for it to start cost more than the whole kernel.
    chunks = [(bounds[k], bounds[k + 1]) for k in range(parts)]  # none empty: parts <= total
    futures = [_POOL.submit(fn, lo, hi) for lo, hi in chunks[1:]]
    fn(*chunks[0])
    for f, (lo, hi) in zip(futures, chunks[1:]):
        if f.cancel():
            fn(lo, hi)
    for f in futures:
        if not f.cancelled():
            f.result()


# ------------------------------------------------------- compiled CPU side ----
# trainer.kernels_cpu holds numba versions of the kernels' NumPy loops that make one pass
# over memory; they give the same bits as the NumPy twins (tests/test_kernels.py
# runs both). ``use_compiled(False)`` (or DATAKIT_COMPILED=0) keeps the NumPy twins.
_COMPILED_ON = True
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def use_compiled(on: bool) -> bool:
    """Turn the compiled CPU kernels on or off; returns the previous setting."""
    global _COMPILED_ON
    prev, _COMPILED_ON = _COMPILED_ON, bool(on)
    return prev


def _compiled(*arrays: Any) -> bool:
    """Whether the compiled kernels take these (host, float32/float64) arrays."""
    if not _COMPILED_ON or any(a.dtype not in _FLOATS or a.dtype != arrays[0].dtype for a in arrays):
        return False
    return kernels_cpu.impl() is not None


def _run_compiled(name: str, total: int, work: int, *args: Any) -> None:
    """Compiled kernel ``name`` over its outer range [0, total), split over the cores as ``parallel`` does."""
    fn = kernels_cpu.kernel(name)
    parallel(total, work, lambda lo, hi: fn(*args, lo, hi))


def compiled_available() -> bool:
    """True when the compiled CPU kernels are in use (numba importable and not turned off)."""
    return _COMPILED_ON and kernels_cpu.impl() is not None


# --------------------------------------------------------------- CuPy side ----

_CUDA_IMPL: Any = None


def _cuda() -> Any:
    global _CUDA_IMPL
    if _CUDA_IMPL is None:
        from trainer import kernels_cuda  # noqa: PLC0415 - compiled only when a GPU is used
        _CUDA_IMPL = kernels_cuda
    return _CUDA_IMPL


def blocks(n: int, threads: int = 256) -> int:
    return max(1, math.ceil(n / threads))
