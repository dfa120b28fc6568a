"""`make bench`: run every benchmarks/bench_*.py in turn.

Each benchmark module defines ``main(argv: list[str] | None = None) -> None``
and prints its own figures, ending with a line ``RATIO name: X (target Y)``.
Pass names to run a subset: ``python -m benchmarks.run_all convert mean``; the
modules are found by name, so a new ``bench_*.py`` (e.g. ``bench_startup``, the
command-line start-up times) runs with the others without an edit here.

``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` are taken out of the environment first, before
NumPy loads here or in a benchmark's subprocess: some machines of our workplace set them to dodge
bugs of old OpenBLAS builds, and they hold NumPy's current OpenBLAS to older kernels than a user's
machine of that kind runs (an AVX-512 CPU held to AVX2's, say). ``DATAKIT_BENCH_KEEP_BLAS_ENV=1``
keeps them. Each benchmark's machine line names the kernels it ran.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path

from benchmarks.machine import BLAS_OVERRIDES  # imports no NumPy


def drop_blas_overrides(environ: MutableMapping[str, str]) -> list[str]:
    """Remove ``BLAS_OVERRIDES`` from ``environ`` unless DATAKIT_BENCH_KEEP_BLAS_ENV=1; the removed ``NAME=value`` pairs."""
    if environ.get("DATAKIT_BENCH_KEEP_BLAS_ENV", "").strip() == "1":
        return []
    return [f"{name}={environ.pop(name)}" for name in BLAS_OVERRIDES if name in environ]


def main(argv: list[str] | None = None) -> None:
    wanted = set(argv if argv is not None else sys.argv[1:])
    removed = drop_blas_overrides(os.environ)  # before anything here imports NumPy
    if removed:
        print(f"(benchmarks run without {' '.join(removed)}, as a user's machine would; "
              "DATAKIT_BENCH_KEEP_BLAS_ENV=1 keeps them)", flush=True)
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    for name in names:
        short = name.removeprefix("bench_")
        if wanted and short not in wanted:
            continue
        print(f"=== {short}", flush=True)
        started = time.perf_counter()
        importlib.import_module(f"benchmarks.{name}").main([])
        print(f"=== {short} done in {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
