"""`trainer fit --solver S [--weights W | --snapshot X.solverstate]`: Caffe's `caffe train`."""

from __future__ import annotations

import argparse
import sys
import time

from cli.common_options import add_progress_flags

HELP = "Train or fine-tune the net a Caffe solver prototxt names (Caffe's `caffe train`)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--solver", required=True, help="solver prototxt (paths inside resolve against the current dir)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="fine-tune: .caffemodel(s) to copy by layer name (comma-separated)")
    src.add_argument("--snapshot", help="resume from a .solverstate (or Caffe's .solverstate.h5) written by a snapshot")
    p.add_argument("--restart", action="store_true",
                   help="start over even where snapshots of the same snapshot_prefix exist (without it, fit stops and names the latest; they are overwritten as the new run reaches their iterations)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"],
                   help="where to train (auto: the solver's solver_mode CPU if set, else the GPU when CuPy sees one)")
    p.add_argument("--gpu", type=int, default=0, help="CUDA device id with --device gpu/auto")
    p.add_argument("--log", help="log file in Caffe's format (default <snapshot_prefix>.log, appended; each run starts with a 'trainer fit run N:' line)")
    p.add_argument("--metrics", help="metrics CSV, one row per event with a run column (default <snapshot_prefix>.metrics.csv)")
    p.add_argument("--max-iter", type=int, help="override the solver's max_iter (the test nets then also run after the last iteration)")
    p.add_argument("--report", metavar="JSON", help="write a JSON summary (iterations, snapshots, test scores)")
    p.add_argument("--tensorboard", metavar="DIR", help="also write train loss, lr and every test output as TensorBoard scalars into DIR as training goes")
    p.add_argument("--quiet", action="store_true", help="no log lines on stderr (the log file is still written)")
    add_progress_flags(p)  # the test passes' bar


def run(args: argparse.Namespace) -> int:
    from datakit.errors import ConfigError
    from datakit.report import write_report
    from trainer.fit import FitOptions, exit_status, fit, report_dict, summary_lines
    from trainer.stop_signals import hung_up

    if args.restart and args.snapshot:
        raise ConfigError("give --snapshot (resume) or --restart (start over), not both")
    opts = FitOptions(solver=args.solver, weights=args.weights, snapshot=args.snapshot, device=args.device,
                      gpu=args.gpu, log=args.log, metrics=args.metrics, max_iter=args.max_iter,
                      stream=None if args.quiet else sys.stderr, restart=args.restart,
                      tensorboard=args.tensorboard, progress=args.progress,
                      ignore_signals_after_stop=True)  # the snapshot is written: exit 128+N, whatever comes
    started = time.perf_counter()
    result = fit(opts)
    if args.report:
        write_report(args.report, report_dict(result, opts, time.perf_counter() - started))
    try:
        for line in summary_lines(result):
            print(line)
        sys.stdout.flush()
    except OSError:
        if not hung_up(result):
            raise
    if hung_up(result):
        _drop_gone_streams()
    return exit_status(result)


def _drop_gone_streams() -> None:
    """After SIGHUP: point stdout/stderr at /dev/null where the terminal they were is gone (a flush
    fails with EIO), so the interpreter's final flush cannot turn exit 129 into 120 or a traceback."""
    from cli.dispatch import quiet_stream
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            quiet_stream(stream)
