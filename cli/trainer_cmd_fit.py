"""`trainer fit --solver S [--weights W | --snapshot X.solverstate]`: Caffe's `caffe train`."""

from __future__ import annotations

import argparse
import sys
import time

HELP = "Train or fine-tune the net a Caffe solver prototxt names (Caffe's `caffe train`)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--solver", required=True, help="solver prototxt (paths inside resolve against the current dir)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="fine-tune: .caffemodel(s) to copy by layer name (comma-separated)")
    src.add_argument("--snapshot", help="resume from a .solverstate written by a snapshot")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"],
                   help="where to train (auto: the solver's solver_mode CPU if set, else the GPU when CuPy sees one)")
    p.add_argument("--gpu", type=int, default=0, help="CUDA device id with --device gpu/auto")
    p.add_argument("--log", help="log file in Caffe's format (default <snapshot_prefix>.log, appended)")
    p.add_argument("--metrics", help="metrics CSV (default <snapshot_prefix>.metrics.csv)")
    p.add_argument("--max-iter", type=int, help="override the solver's max_iter (the test nets then also run after the last iteration)")
    p.add_argument("--report", metavar="JSON", help="write a JSON summary (iterations, snapshots, test scores)")
    p.add_argument("--quiet", action="store_true", help="no log lines on stderr (the log file is still written)")


def run(args: argparse.Namespace) -> int:
    from datakit.report import write_report
    from trainer.fit import FitOptions, fit, report_dict

    opts = FitOptions(solver=args.solver, weights=args.weights, snapshot=args.snapshot, device=args.device,
                      gpu=args.gpu, log=args.log, metrics=args.metrics, max_iter=args.max_iter,
                      stream=None if args.quiet else sys.stderr)
    started = time.perf_counter()
    result = fit(opts)
    if args.report:
        write_report(args.report, report_dict(result, opts, time.perf_counter() - started))
    last = result.snapshots[-1].caffemodel if result.snapshots else None
    scores = "; ".join(f"test net #{i}: " + ", ".join(f"{k} = {v:.4g}" for k, v in s.items())
                       for i, s in enumerate(result.test_scores))
    print(f"trained to iteration {result.iterations}" + (f"; weights {last}" if last else "")
          + (f"; {scores}" if scores else ""))
    if result.stopped_early:
        print(f"stopped early ({result.stop_reason}); resume with --snapshot {result.snapshots[-1].solverstate}")
        return 130 if result.stop_reason == "SIGINT" else 143
    return 0
