"""`trainer time`: Caffe's `caffe time` (per-layer forward/backward milliseconds)."""

from __future__ import annotations

import argparse
import json
import sys

from cli.trainer_options import add_device_options, add_state_options, check_exists, phase_of, positive

HELP = "Benchmark a net layer by layer: average forward/backward ms (like `caffe time`)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="net prototxt")
    p.add_argument("--weights", help="optional .caffemodel (timings do not depend on it)")
    p.add_argument("--iterations", type=positive, default=50, help="timed iterations (default 50)")
    p.add_argument("--batch-size", type=positive, help="reshape Input layers to this batch size")
    p.add_argument("--forward-only", action="store_true", help="time the forward pass only")
    add_state_options(p, "TRAIN")
    add_device_options(p)
    p.add_argument("--report", metavar="JSON", help="also write the timings as JSON")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from datakit.atomic import write_text_atomic
    from datakit.formats.prototxt import read_net
    from trainer import backend
    from trainer.net import Net
    from trainer.timing import time_net
    from trainer.weights import load_weights_list

    check_exists(args.model, "model prototxt")
    xp = backend.select(args.device, args.gpu)
    param = read_net(args.model)
    if args.batch_size:
        for lp in param.layer:
            if lp.type == "Input":
                for shape in lp.input_param.shape:
                    if len(shape.dim):
                        shape.dim[0] = args.batch_size
    net = Net(param, phase_of(args.phase), xp=xp, stages=args.stage, level=args.level, seed=0, source=args.model)
    if args.weights:
        load_weights_list(net, args.weights)
    if not net.has_loss:
        net.enable_full_backward()  # as `caffe time`: every layer runs backward
    print(f"Timing {args.iterations} iterations on {backend.device_name(xp)}.", flush=True)
    bar = tqdm(total=args.iterations, desc="time", unit="iter", disable=not sys.stderr.isatty(), file=sys.stderr)
    try:
        report = time_net(net, args.iterations, forward_only=args.forward_only, progress=lambda _: bar.update(1))
    finally:
        bar.close()
        net.close()
    print(report.format())
    if args.report:
        data = {"iterations": report.iterations, "batch_size": report.batch_size,
                "forward_ms": report.forward_ms, "backward_ms": report.backward_ms,
                "ms_per_image": report.ms_per_image, "total_ms": report.total_ms,
                "layers": [vars(t) for t in report.layers]}
        write_text_atomic(args.report, json.dumps(data, indent=2) + "\n")
    return 0
