"""`trainer test`: Caffe's `caffe test` (score a model over N batches of its TEST phase)."""

from __future__ import annotations

import argparse
import json
import sys

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


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from datakit.atomic import write_text_atomic
    from trainer import backend
    from trainer.evaluate import batch_lines, score_net
    from trainer.net import Net
    from trainer.weights import load_weights_list

    check_exists(args.model, "model prototxt")
    xp = backend.select(args.device, args.gpu)
    net = Net.from_file(args.model, phase_of(args.phase), xp=xp, stages=args.stage, level=args.level)
    for rep in load_weights_list(net, args.weights):
        print(f"Weights: {rep.summary()}", file=sys.stderr)
    print(f"Running {args.iterations} iterations on {backend.device_name(xp)}.", file=sys.stderr)

    bar = tqdm(total=args.iterations, desc="test", unit="batch", disable=not (args.quiet and sys.stderr.isatty()),
               file=sys.stderr)

    def on_batch(it: int, outs: dict) -> None:
        bar.update(1)
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
        write_text_atomic(args.report, json.dumps(result.as_dict(), indent=2) + "\n")
    return 130 if result.interrupted else 0
