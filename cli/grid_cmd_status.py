"""`trainer grid status GRID`: a table of every net: state, iteration, best accuracy, score."""

from __future__ import annotations

import argparse

HELP = "Print every net of a grid: done / running / waiting / failed / skipped, iteration, best accuracy, score."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", metavar="GRID", help="a folder written by `trainer grid make`")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead")


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from trainer.grid.status import format_status, grid_status

    rows = grid_status(args.grid)
    print(json.dumps([asdict(r) for r in rows], indent=1) if args.json else format_status(rows))
    return 0
