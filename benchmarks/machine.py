"""The machine line every benchmark prints: CPU model, AVX-512 or not, cores, load, date (RESULTS.md quotes it).

Ratios move with the CPU kind (OpenBLAS and MKL pick different kernels for
AVX2 and AVX-512) and with other jobs on the machine, so a figure without this
line cannot be compared with another.
"""

from __future__ import annotations

import os
import platform
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


def describe() -> str:
    """One line: CPU model, AVX-512 yes/no, cores, load average now, UTC date and time."""
    avx = {True: "AVX-512: yes", False: "AVX-512: no", None: "AVX-512: unknown"}[has_avx512()]
    try:
        load = f"load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = "load average unknown"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"machine: {cpu_model()} ({avx}), {os.cpu_count()} CPU cores, {load}, {when}"
