"""`datakit mean DB OUT`: Caffe's compute_image_mean; `--convert IN OUT` between .binaryproto and .npy."""

from __future__ import annotations

import argparse
import sys

from cli.common_options import add_backend_flag, add_cluster_flags, add_progress_flags
from cli.sigterm import EXIT_SIGTERM, sigterm_as_ctrl_c

HELP = ("Per-pixel mean image of a database (compute_image_mean) as .binaryproto and/or .npy; "
        "--convert IN OUT between the two formats.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="DB", help="database (LMDB/LevelDB folder, HDF5 .h5/.txt/folder); "
                   "with --convert, the mean file to convert")
    p.add_argument("out", metavar="OUT", help="output: .npy (float32 C x H x W) or anything else for "
                   "Caffe's BlobProto (.binaryproto)")
    p.add_argument("--npy", action="store_true", help="also write OUT with a .npy suffix")
    p.add_argument("--convert", action="store_true",
                   help="convert the mean file DB (.binaryproto or .npy) to OUT instead of computing")
    add_backend_flag(p, help="default: detected from DB")
    p.add_argument("--workers", type=int, default=0, help="reader/decoder processes (default 0: all cores, except that a database of raw pixels under 1 GiB is summed in this process)")
    add_cluster_flags(p)
    add_progress_flags(p)


def run(args: argparse.Namespace) -> int:
    from cli.common_options import cluster_executor
    from datakit.errors import ConfigError
    from datakit.mean import compute_mean, convert_mean, save_mean

    if args.convert:
        if args.npy or args.backend or args.scheduler or args.cluster:
            raise ConfigError("--convert takes only IN and OUT")
        mean = convert_mean(args.source, args.out)
        print(f"{args.source} -> {args.out}: {'x'.join(map(str, mean.shape))}")
        return 0
    # SIGTERM (`kill PID`, a job scheduler) stops as Ctrl-C does: nothing is written, exit 143, not a silent -15
    with sigterm_as_ctrl_c() as term:
        executor = cluster_executor(args)  # None: local processes, as always
        try:
            result = compute_mean(args.source, args.backend, workers=args.workers, progress=args.progress,
                                  executor=executor)
        except KeyboardInterrupt:
            if not term.seen:
                raise  # Ctrl-C: "datakit: interrupted", exit 130
            print("datakit: stopped by SIGTERM; no mean was written", file=sys.stderr)
            return EXIT_SIGTERM
        finally:
            if executor is not None:
                executor.close()
    paths = save_mean(result, args.out, also_npy=args.npy)
    for c, value in enumerate(result.per_channel):
        print(f"mean_value channel [{c}]: {value:.6g}")
    print(f"{args.source}: mean of {result.count} records, {'x'.join(map(str, result.mean.shape))}, "
          f"{result.seconds:.1f} s -> {', '.join(map(str, paths))}")
    return 0
