"""`trainer test`: Caffe's `caffe test` (score a model over N batches of its TEST phase)."""

from __future__ import annotations

import argparse
import sys

from cli.common_options import add_progress_flags
from cli.trainer_options import add_device_options, add_state_options, check_exists, phase_of, positive

HELP = "Score a trained model: run N batches and print each net output averaged (like `caffe test`)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="net prototxt (train_val or test net with data layers)")
    p.add_argument("--weights", required=True,
                   help=".caffemodel or Caffe's .caffemodel.h5 to score (comma-separated list: later files win)")
    p.add_argument("--iterations", type=positive, default=50, help="batches to run (default 50, as Caffe)")
    add_state_options(p, "TEST")
    add_device_options(p)
    p.add_argument("--quiet", action="store_true", help="do not print the per-batch lines")
    p.add_argument("--report", metavar="JSON", help="also write the averaged outputs as JSON")
    add_progress_flags(p)


def run(args: argparse.Namespace) -> int:
    from datakit.report import progress_bar, progress_enabled, write_report
    from trainer import backend
    from trainer.evaluate import batch_lines, score_net
    from trainer.net import Net
    from trainer.weights import load_weights_list

    check_exists(args.model, "model prototxt")
    xp = backend.select(args.device, args.gpu)
    net = Net.from_file(args.model, phase_of(args.phase), xp=xp, stages=args.stage, level=args.level)
    for rep in load_weights_list(net, args.weights):
        print(f"Weights: {rep.summary()}", file=sys.stderr)
    from trainer.rails import test_pass_overruns
    for warning in test_pass_overruns(net, args.iterations, "--iterations"):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"Running {args.iterations} iterations on {backend.device_name(xp)}.", file=sys.stderr)

    # by default only with --quiet (the per-batch lines would fight a bar) and on a terminal
    shown = args.progress if args.progress is not None else (None if args.quiet else False)
    bar = progress_bar(args.iterations, shown, desc="test", unit="batch")
    lines = None  # --quiet with no bar (a log file, nohup): a line now and then on stderr if the pass lasts
    if args.quiet and args.progress is not False and not progress_enabled(shown):
        from trainer.pass_progress import PassProgress
        lines = PassProgress(args.iterations, lambda text: print(text, file=sys.stderr, flush=True), "test")

    def on_batch(it: int, outs: dict) -> None:
        bar.update(1)
        if lines is not None:
            lines.update(it + 1)
        for line in [] if args.quiet else batch_lines(it, outs, net.output_names):
            print(line, flush=True)

    try:
        result = score_net(net, args.iterations, on_batch)
    finally:
        bar.close()
        net.close()
    if result.interrupted:
        print(f"Interrupted: averages over the {result.iterations} batches scored.", file=sys.stderr)
    for line in result.lines():
        print(line)
    if args.report:
        write_report(args.report, result.as_dict())
    return 130 if result.interrupted else 0
