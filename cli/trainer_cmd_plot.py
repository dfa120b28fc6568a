"""`trainer plot LOG... -o curves.png`: training curves from our logs and real Caffe logs."""

from __future__ import annotations

import argparse

HELP = "Plot train loss, test loss/accuracy and lr against iteration from Caffe-format logs (.gz ok)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("logs", nargs="+", help="log files written by `trainer fit` or by Caffe (plain or .gz)")
    p.add_argument("-o", "--output", help="PNG to write (default curves.png; none with --tensorboard unless given)")
    p.add_argument("--tensorboard", metavar="DIR", help="also convert the logs into TensorBoard runs, one folder per log in DIR")
    p.add_argument("--title", help="figure title (default: the log names)")


def run(args: argparse.Namespace) -> int:
    from trainer.curves import parse_log, plot, summary

    for log in args.logs:
        print(summary(parse_log(log)))
    if args.tensorboard:
        from trainer.tensorboard import log_to_tensorboard
        for folder, count in log_to_tensorboard(args.logs, args.tensorboard):
            print(f"wrote {count} scalars to {folder}")
    if args.output or not args.tensorboard:
        out = plot(args.logs, args.output or "curves.png", title=args.title)
        print(f"wrote {out}")
    return 0
