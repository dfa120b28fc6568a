"""startup: seconds for `datakit --help`, `datakit --version` and `trainer --help` (target: each under 0.15 s).

Each command is the real console script (``datakit`` / ``trainer`` beside
this interpreter; ``python -m cli.datakit_main`` when they are not
installed), run as a fresh process; the figure is the best of ``--repeat``
runs, so that a busy machine's noise counts as little as it can.

Baselines in the same run: the bare interpreter (``python -c pass``: what no
command can go below) and the old way of building the parser, importing every
command module before parsing (``eager``).

    python -m benchmarks.bench_startup [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

TARGET = 0.15
ROOT = Path(__file__).resolve().parents[1]


def _script(tool: str) -> list[str]:
    installed = Path(sys.executable).parent / tool
    if installed.is_file():
        return [str(installed)]
    return [sys.executable, "-m", f"cli.{tool}_main"]


def best_of(cmd: list[str], repeat: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - started)
    return best


def _eager_import(tool: str) -> list[str]:
    """Import every command module of `tool`, as the parser used to before it parsed anything."""
    code = (f"import importlib; from cli.{tool}_main import COMMANDS\n"
            "for m in COMMANDS.values(): importlib.import_module(m)")
    return [sys.executable, "-c", code]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench_startup")
    ap.add_argument("--repeat", type=int, default=15, help="best of N runs of each command")
    args = ap.parse_args(argv)
    bare = best_of([sys.executable, "-c", "pass"], args.repeat)
    print(f"python -c pass: {bare:.3f} s (the interpreter alone)")
    worst = 0.0
    for tool, flag in (("datakit", "--help"), ("datakit", "--version"), ("trainer", "--help")):
        seconds = best_of([*_script(tool), flag], args.repeat)
        worst = max(worst, seconds)
        print(f"{tool} {flag}: {seconds:.3f} s (target {TARGET}) {'ok' if seconds < TARGET else 'MISSED'}")
    for tool in ("datakit", "trainer"):
        print(f"eager import of every {tool} command module (the old parser): "
              f"{best_of(_eager_import(tool), max(3, args.repeat // 3)):.3f} s")
    print(f"RATIO startup_seconds: {worst:.3f} (target {TARGET})")
    print(f"RATIO startup_vs_interpreter: {worst / bare:.2f} (the slowest command over `python -c pass`)")


if __name__ == "__main__":
    main()
