"""`trainer plot LOG... -o curves.png`: training curves from our logs and real Caffe logs."""

from __future__ import annotations

import argparse

HELP = ("Plot train loss, test loss/accuracy and lr against iteration from Caffe-format logs (.gz ok); "
        "--transfer DIR draws the transfer paper's figures from a grid or results folder.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("logs", nargs="+", help="log files written by `trainer fit` or by Caffe (plain or .gz); "
                   "with --transfer, one grid / results folder or a `trainer grid summary --json` file")
    p.add_argument("--transfer", action="store_true",
                   help="draw Figure 2 (BnB, BnB+, AnB, AnB+ against n) and the natural/man-made, "
                   "random-frozen and reduced-volume panels whose nets are present")
    p.add_argument("-o", "--output", help="PNG to write (default curves.png; none with --tensorboard unless given)")
    p.add_argument("--tensorboard", metavar="DIR", help="also convert the logs into TensorBoard runs, one folder per log in DIR")
    p.add_argument("--title", help="figure title (default: the log names)")


def run(args: argparse.Namespace) -> int:
    if args.transfer:
        return _run_transfer(args)
    from trainer.curves import parse_log, plot_runs, summary

    runs = []
    for log in args.logs:  # each log parsed once, for the summary, the board and the figure
        parsed = parse_log(log)
        print(summary(parsed))
        runs.extend(parsed)
    if args.tensorboard:
        from trainer.tensorboard import runs_to_tensorboard
        for folder, count in runs_to_tensorboard(runs, args.tensorboard):
            print(f"wrote {count} scalars to {folder}")
    if args.output or not args.tensorboard:
        out = plot_runs(runs, args.output or "curves.png", title=args.title)
        print(f"wrote {out}")
    return 0


def _run_transfer(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from datakit.errors import ConfigError
    from trainer.grid.figure import plot_transfer
    from trainer.grid.summary import format_table, group, read_json, summarize

    if len(args.logs) != 1:
        raise ConfigError("--transfer takes one grid / results folder or one summary .json")
    source = Path(args.logs[0])
    if not source.exists():  # a mistyped summary .json is not "not a folder"
        raise ConfigError(f"{source}: no such file or folder (--transfer takes a grid / results folder or "
                          "the .json of `trainer grid summary --json`)")
    rows = read_json(source) if source.is_file() else summarize(source, jobs=min(4, os.cpu_count() or 1), progress=None)
    print(format_table(rows, group(rows)))
    metric = "mean of the 10 highest test top-1 accuracies"
    if source.is_file():
        import json
        metric = json.loads(source.read_text(encoding="utf-8")).get("metric", metric)
    out = plot_transfer(rows, args.output or "curves.png", title=args.title, ylabel=f"top-1 accuracy ({metric})")
    print(f"wrote {out}")
    return 0
