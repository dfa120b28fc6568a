"""`trainer grid summary DIR`: the paper's metric for every net, and per family and n."""

from __future__ import annotations

import argparse
import os

from cli.common_options import add_progress_flags

HELP = ("Score every net folder of a grid or results folder: the mean of its 10 highest test top-1 "
        "accuracies, then the mean per family and n; prints the table, writes CSV / JSON.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", metavar="GRID_OR_RESULTS_DIR", help="a folder with one sub-folder per net")
    p.add_argument("--csv", metavar="FILE", help="write one row per net (net, family, n, score, ...)")
    p.add_argument("--json", metavar="FILE", help="write nets and per-family means as JSON (trainer plot --transfer reads it)")
    p.add_argument("--markdown", action="store_true", help="print the per-family table as Markdown")
    p.add_argument("--metric", default="accuracy", help="test output to score (default accuracy = top-1; "
                   "2014 logs' 'Test score #0')")
    p.add_argument("--top", type=int, default=10, metavar="K",
                   help="average the K highest tests (default 10, the paper's metric)")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="processes reading logs")
    add_progress_flags(p)


def run(args: argparse.Namespace) -> int:
    from trainer.grid.summary import format_table, group, markdown_table, summarize, write_csv, write_json

    rows = summarize(args.root, args.metric, jobs=args.jobs, top=args.top, progress=args.progress)
    groups = group(rows)
    print(markdown_table(groups) if args.markdown else format_table(rows, groups))
    if args.csv:
        write_csv(args.csv, rows)
    if args.json:
        write_json(args.json, rows, groups, top=args.top)
    return 0
