"""Local worker processes for the CPU-heavy stages (convert, mean): how they start and how they end.

Every worker started here (by :func:`worker_pool` or by
``datakit.parallel.LocalExecutor``) runs :func:`start_worker` first, which

* ignores SIGINT, and SIGTERM from anyone but the coordinator. Workers
  inherit the coordinator's Python handlers at fork, and workers that
  raised KeyboardInterrupt would only print one traceback each, or fail the
  task the coordinator is waiting for: Ctrl-C (the terminal sends it to the
  whole process group) and a group's SIGTERM (``kill -- -PGID``, a job
  scheduler) are the coordinator's to handle (it saves progress and closes
  the pool). The coordinator's own SIGTERM must end a worker: a pool broken
  by a worker's crash ends the others with it, and a worker killed while it
  held the result queue's lock leaves the others blocked on that lock for
  good (with SIGTERM ignored, a conversion hung there). So SIGTERM is
  blocked and a thread takes it with ``sigwaitinfo``, ending the worker when
  the sender is the coordinator (where ``sigwaitinfo`` is missing, macOS,
  SIGTERM keeps its default). Workers also end with the pool, or by SIGKILL
  when the coordinator dies (below);
* asks the kernel for SIGKILL when the parent dies (Linux
  ``PR_SET_PDEATHSIG``), and exits at once if the parent is already gone, so
  that a coordinator killed with SIGKILL (or by the OOM killer) leaves no
  orphaned workers behind;
* keeps freed memory in glibc's heap (:func:`keep_freed_memory`);
* then runs the caller's own initializer with its arguments.

Import this module only where processes are started: it is not needed to
parse a command line.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["WorkerSetup", "default_workers", "keep_freed_memory", "exit_with_parent", "opencv_one_thread",
           "start_worker", "worker_pool"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def default_workers() -> int:
    """All the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _libc():
    import ctypes  # noqa: PLC0415 - Linux-only, once per worker
    return ctypes.CDLL("libc.so.6", use_errno=True)


def keep_freed_memory() -> None:
    """glibc: serve every image buffer from the heap and keep freed memory (no munmap, no trim).

    Each decode allocates a fresh image and each resize another; by default
    glibc maps big blocks afresh and returns freed heap tops to the kernel, so
    every image paid page faults and the kernel's zeroing. A worker's peak is a
    few images, so keeping freed memory costs little.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        mallopt = _libc().mallopt
        mallopt(-3, 64 << 20)   # M_MMAP_THRESHOLD: blocks under 64 MB come from the heap
        mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: return a free heap top only above 256 MB


def exit_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies; exit now if it already has.

    The parent-death signal follows the thread that forked the worker; the
    pools here fork from the coordinator's own thread, which lives as long
    as the pool. The getppid check closes the race of a parent that died
    between the fork and the prctl.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            _libc().prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


@dataclass(frozen=True)
class WorkerSetup:
    """How a worker process sets itself up before the caller's initializer runs.

    `parent_pid`: the coordinator's pid (the worker exits when it dies);
    `fresh`: a spawned interpreter rather than a fork (then it configures
    OpenCV itself); `opencv`: run OpenCV on one thread in the worker.
    """

    parent_pid: int
    fresh: bool = False
    opencv: bool = False


def start_worker(setup: WorkerSetup, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """The initializer of every local worker process (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    end_on_sigterm_from(setup.parent_pid)
    exit_with_parent(setup.parent_pid)
    keep_freed_memory()
    if setup.fresh and setup.opencv:  # a spawned interpreter: safe to configure OpenCV here
        import cv2  # noqa: PLC0415 - only workers that decode images
        cv2.setNumThreads(1)
    if initializer is not None:
        initializer(*initargs)


def end_on_sigterm_from(sender: int) -> None:
    """End this process at a SIGTERM sent by process `sender` only; others are dropped (module docstring)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not hasattr(signal, "sigwaitinfo"):
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # before any other thread: they inherit it

    def take() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == sender:
                os._exit(128 + signal.SIGTERM)

    threading.Thread(target=take, name="datakit-worker-sigterm", daemon=True).start()


@contextlib.contextmanager
def opencv_one_thread() -> Iterator[None]:
    """Run OpenCV single-threaded in this process (and so in children forked meanwhile).

    Calling cv2.setNumThreads in a forked child can deadlock on the parent's
    thread pool, so the parent sets it while its pool lives and the children
    inherit the setting. Restored on exit.
    """
    import cv2  # noqa: PLC0415 - only the stages that decode images need OpenCV
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


@contextlib.contextmanager
def worker_pool(workers: int, initializer: Callable[..., None] | None = None,
                initargs: tuple = ()) -> Iterator[cf.ProcessPoolExecutor]:
    """A process pool whose workers each run OpenCV on one thread (the pool is the parallelism).

    On Linux workers are forked, so that nothing of the caller's program is
    re-imported (scripts without a main guard, notebooks, stdin all work).
    `initializer(*initargs)` runs in each worker after :func:`start_worker`;
    what it receives travels as arguments (inherited through fork, pickled
    with spawn).
    """
    fork = sys.platform.startswith("linux")
    ctx = multiprocessing.get_context("fork" if fork else "spawn")
    setup = WorkerSetup(os.getpid(), fresh=not fork, opencv=True)
    with opencv_one_thread(), cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=start_worker,
                                                     initargs=(setup, initializer, initargs)) as pool:
        yield pool
