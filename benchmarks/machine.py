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
from pathlib import Path


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
    forced = [f"{v}={os.environ[v]}" for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if os.environ.get(v)]
    if forced:
        blas += f" ({' '.join(forced)} set: unset both in the benchmark's command for a user's figures)"
    return f"machine: {cpu_model()} ({avx}), {blas}, {os.cpu_count()} CPU cores, {load}, {when}"
