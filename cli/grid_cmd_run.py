"""`trainer grid run GRID [--jobs N]`: train the nets of a grid in dependency order, resumable."""

from __future__ import annotations

import argparse
import sys

from cli.common_options import add_cluster_flags
from cli.sigterm import EXIT_SIGTERM, sigterm_as_ctrl_c

HELP = ("Train a grid's nets in dependency order, N at a time as local processes (or as tasks of a Dask "
        "cluster); resumes a half-done grid (done nets skipped, interrupted ones continue from their last "
        "snapshot).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", metavar="GRID", help="a folder written by `trainer grid make`")
    p.add_argument("--jobs", "-j", type=int, default=1, help="nets trained at once (default 1)")
    p.add_argument("--quiet", action="store_true", help="no status line or per-net lines")
    add_cluster_flags(p)  # each net a task (after its base); --jobs is then the cluster's worker threads


def run(args: argparse.Namespace) -> int:
    from cli.common_options import cluster_executor
    from trainer.grid.runner import run_grid

    # SIGTERM: the same stop as Ctrl-C (the running nets are asked to snapshot, their state is recorded as
    # interrupted), then exit 143; at its default the nets were recorded as "ended without a word"
    with sigterm_as_ctrl_c() as term:
        executor = cluster_executor(args)  # None: --jobs local threads, each waiting on its net's process
        try:
            result = run_grid(args.grid, jobs=args.jobs, executor=executor, stream=None if args.quiet else sys.stderr)
        except KeyboardInterrupt:
            if not term.seen:
                raise  # Ctrl-C: "trainer: interrupted", exit 130, as before
            print(f"trainer: stopped by SIGTERM; `trainer grid run {args.grid}` resumes the grid", file=sys.stderr)
            return EXIT_SIGTERM
        finally:
            if executor is not None:
                executor.close()
    failed, skipped = result.count("failed"), result.count("skipped")
    print(f"{args.grid}: {result.count('done')} nets done this run, {failed} failed, {skipped} skipped"
          + ("; interrupted: `trainer grid run` again resumes" if result.interrupted else ""))
    if result.interrupted:
        return 130
    return 1 if failed or skipped else 0
