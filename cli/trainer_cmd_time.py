"""`trainer time`: Caffe's `caffe time` (per-layer forward/backward milliseconds)."""

from __future__ import annotations

import argparse

from cli.common_options import add_progress_flags
from cli.trainer_options import add_device_options, add_state_options, check_exists, phase_of, positive

HELP = "Benchmark a net layer by layer: average forward/backward ms (like `caffe time`)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="net prototxt")
    p.add_argument("--weights", help="optional .caffemodel (timings do not depend on it)")
    p.add_argument("--iterations", type=positive, default=50, help="timed iterations (default 50), after untimed warm-up passes (2; 1 with --forward-only)")
    p.add_argument("--batch-size", type=positive, help="reshape Input layers to this batch size")
    p.add_argument("--forward-only", action="store_true", help="time the forward pass only")
    add_state_options(p, "TRAIN")
    add_device_options(p)
    p.add_argument("--report", metavar="JSON", help="also write the timings as JSON")
    add_progress_flags(p)


def run(args: argparse.Namespace) -> int:
    from datakit.report import progress_bar, write_report
    from trainer import backend
    from trainer.timing import time_net, timing_net

    check_exists(args.model, "model prototxt")
    xp = backend.select(args.device, args.gpu)
    net = timing_net(args.model, batch_size=args.batch_size, phase=phase_of(args.phase), stages=args.stage,
                     level=args.level, weights=args.weights, xp=xp)
    print(f"Timing {args.iterations} iterations on {backend.device_name(xp)}.", flush=True)
    bar = progress_bar(args.iterations, args.progress, desc="time", unit="iter")
    try:
        report = time_net(net, args.iterations, forward_only=args.forward_only, progress=lambda _: bar.update(1))
    finally:
        bar.close()
        net.close()
    print(report.format())
    if args.report:
        write_report(args.report, report.as_dict())
    return 0
