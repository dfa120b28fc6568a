"""The machine line every benchmark prints: CPU model, AVX-512 or not, cores, load, date (RESULTS.md quotes it).

Ratios move with the CPU kind (OpenBLAS and MKL pick different kernels for
AVX2 and AVX-512) and with other jobs on the machine, so a figure without this
line cannot be compared with another.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path


#: environment variables that hold OpenBLAS to other kernels than it would pick (``make bench`` drops them)
BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def cpu_model() -> str:
    """The CPU's model name as lscpu prints it (from /proc/cpuinfo; the platform's name elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_avx512() -> bool | None:
    """True when the CPU flags list avx512f; None when the flags cannot be read (not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return "avx512f" in line.split(":", 1)[1].split()
    except OSError:
        pass
    return None


def blas_kernels() -> str:
    """The kernel family NumPy's OpenBLAS runs on this CPU (``Haswell``, ``SkylakeX``, ``Zen``, ...).

    Read from the loaded library (OpenBLAS picks it at start-up, or takes ``OPENBLAS_CORETYPE``);
    "unknown" for another BLAS or where /proc/self/maps cannot be read.
    """
    import numpy  # noqa: F401, PLC0415 - loads the BLAS whose kernels are asked for
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    for path in sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps))):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_",
                     "openblas_get_corename"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return (fn() or b"unknown").decode()
    return "unknown"


def describe() -> str:
    """One line: CPU model, AVX-512 yes/no, NumPy's BLAS kernels, cores, load average now, UTC date and time.

    An ``OPENBLAS_CORETYPE`` (or ``OPENBLAS_L2_SIZE``) in the environment is named: some machines set it to
    dodge old OpenBLAS bugs, and it can hold a current NumPy to slower kernels than a user's machine runs.
    """
    avx = {True: "AVX-512: yes", False: "AVX-512: no", None: "AVX-512: unknown"}[has_avx512()]
    try:
        load = f"load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = "load average unknown"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    blas = f"NumPy BLAS kernels {blas_kernels()}"
    forced = [f"{v}={os.environ[v]}" for v in BLAS_OVERRIDES if os.environ.get(v)]
    if forced:
        blas += f" ({' '.join(forced)} set: unset both in the benchmark's command for a user's figures)"
    return f"machine: {cpu_model()} ({avx}), {blas}, {os.cpu_count()} CPU cores, {load}, {when}"


#: GEMM shapes (M, K, N) of the layers the issue-16 benchmarks time: LeNet's conv2 forward at batch 64
#: (50 filters, 20·5·5 inputs, 64·8·8 pixels) and one group of CaffeNet's conv2 forward at batch 16.
GEMM_SHAPES = {"LeNet conv2": (50, 500, 4096), "CaffeNet conv2 (one group, batch 16)": (128, 1200, 11664)}


def _best_seconds(fn: Callable[[], object], budget: float) -> float:
    fn()
    best = float("inf")
    spent = 0.0
    while spent < budget or best == float("inf"):
        t0 = time.perf_counter()
        fn()
        took = time.perf_counter() - t0
        best, spent = min(best, took), spent + took
    return best


def gemm_gflops(m: int, k: int, n: int, budget: float = 0.2, library: str = "numpy") -> float:
    """float32 GFLOP/s of one (m×k)·(k×n) product into a kept output, the best call within ``budget`` seconds.

    ``library`` "numpy" (its BLAS, as the trainer calls it) or "torch" (``torch.mm``, the baselines'
    library; imported here). Why in the benchmarks' output: a ratio against PyTorch that moves between
    machine kinds is first a question of whether both sides' GEMMs got the machine's speed.
    """
    if library == "torch":
        import torch  # noqa: PLC0415 - benchmark-only dependency
        a, b = torch.rand(m, k), torch.rand(k, n)
        out = torch.empty(m, n)
        seconds = _best_seconds(lambda: torch.mm(a, b, out=out), budget)
    else:
        import numpy as np  # noqa: PLC0415
        rng = np.random.default_rng(0)
        x, y = rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32)
        res = np.empty((m, n), dtype=np.float32)
        seconds = _best_seconds(lambda: np.matmul(x, y, out=res), budget)
    return 2.0 * m * k * n / seconds / 1e9


def gemm_line(libraries: tuple[str, ...] = ("numpy", "torch")) -> str:
    """One line of GEMM speeds at ``GEMM_SHAPES`` for each library that imports (a missing torch is skipped)."""
    parts = []
    for label, (m, k, n) in GEMM_SHAPES.items():
        speeds = []
        for lib in libraries:
            try:
                speeds.append(f"{lib} {gemm_gflops(m, k, n, library=lib):.0f}")
            except ImportError:
                continue
        parts.append(f"{label} {m}x{k}x{n}: " + ", ".join(speeds))
    return "GEMM float32 GFLOP/s (best call) - " + "; ".join(parts)
