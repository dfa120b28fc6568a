"""`make bench`: run every benchmarks/bench_*.py in turn.

Each benchmark module defines ``main(argv: list[str] | None = None) -> None``
and prints its own figures, ending with a line ``RATIO name: X (target Y)``.
Pass names to run a subset: ``python -m benchmarks.run_all convert mean``; the
modules are found by name, so a new ``bench_*.py`` (e.g. ``bench_startup``, the
command-line start-up times) runs with the others without an edit here.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    wanted = set(argv if argv is not None else sys.argv[1:])
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
