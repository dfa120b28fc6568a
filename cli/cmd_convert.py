"""`datakit convert ROOT LIST DB`: Caffe's convert_imageset, parallel and resumable."""

from __future__ import annotations

import argparse
import sys

from cli.common_options import add_backend_flag, add_cluster_flags, add_progress_flags
from cli.sigterm import EXIT_SIGTERM, sigterm_as_ctrl_c
from datakit.convert.options import ENCODE_TYPES

HELP = ("Convert a Caffe image list into an LMDB, LevelDB or HDF5 database of Datums "
        "(convert_imageset's options and bytes; parallel, resumable).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="image root folder; list paths are relative to it")
    p.add_argument("list", help="Caffe image list: 'relative/path label' per line")
    p.add_argument("db", help="output database (a folder for lmdb/leveldb/hdf5)")
    add_backend_flag(p, default="lmdb", help="default: lmdb")
    p.add_argument("--resize-height", type=int, default=0, metavar="H", help="resize to H rows (0 = keep)")
    p.add_argument("--resize-width", type=int, default=0, metavar="W", help="resize to W columns (0 = keep)")
    p.add_argument("--gray", action="store_true", help="read images as one gray channel")
    p.add_argument("--shuffle", action="store_true", help="shuffle the list order (seeded; see --seed)")
    p.add_argument("--seed", type=int, help="shuffle seed, for a repeatable order (default: random, recorded)")
    p.add_argument("--encoded", action="store_true",
                   help="store JPEG/PNG bytes (the file itself unless resized or --encode-type differs)")
    p.add_argument("--encode-type", choices=ENCODE_TYPES, default="",
                   help="with --encoded: encode as this type (default: the file's own extension)")
    p.add_argument("--check-size", action="store_true", help="fail unless every record has the same size")
    p.add_argument("--hdf5-chunk", type=int, default=1000, metavar="N", help="records per .h5 file (default 1000)")
    p.add_argument("--allow-absolute", action="store_true", help="accept absolute paths in the list")
    p.add_argument("--workers", type=int, default=0, help="decode processes (default 0 = all cores)")
    p.add_argument("--commit-every", type=int, default=1000, metavar="N",
                   help="records per transaction, at most 8 MB each (default 1000, as Caffe)")
    p.add_argument("--checkpoint-every", type=int, default=4, metavar="T",
                   help="a checkpoint every T x --commit-every records or 64 MB, whichever comes first: the "
                        "database is flushed to disk, then the resume point saved (default 4; Caffe flushes "
                        "every transaction, which costs CPU the decoders need)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    p.add_argument("--resume", action="store_true", help="finish an interrupted conversion into DB")
    p.add_argument("--overwrite", action="store_true", help="replace DB (only once the new one is complete)")
    p.add_argument("--report", metavar="JSON", help="write a machine-readable summary (skipped files, counts)")
    add_cluster_flags(p)
    p.add_argument("--partition-size", type=int, default=5000, metavar="N",
                   help="with --scheduler/--cluster: records per task, one shard each (default 5000)")
    add_progress_flags(p)


def resume_command(argv: list[str]) -> str | None:
    """The command that finishes an interrupted conversion: this one with --resume instead of --overwrite
    (the two contradict each other). None when `argv` holds no `convert` command line."""
    import shlex

    if "convert" not in argv[1:]:
        return None
    rest = argv[argv.index("convert", 1) + 1:]
    rest = [a for a in rest if a != "--overwrite"]
    if "--resume" not in rest:
        rest.append("--resume")
    return shlex.join(["datakit", "convert", *rest])


def run(args: argparse.Namespace) -> int:
    from cli.common_options import cluster_executor
    from datakit.convert import ConvertInterrupted, ConvertOptions, convert
    from datakit.report import write_report

    options = ConvertOptions(
        backend=args.backend, resize_height=args.resize_height, resize_width=args.resize_width, gray=args.gray,
        shuffle=args.shuffle, seed=args.seed, encoded=args.encoded, encode_type=args.encode_type,
        check_size=args.check_size, hdf5_chunk=args.hdf5_chunk, allow_absolute=args.allow_absolute,
        workers=args.workers, commit_every=args.commit_every,
        checkpoint_every=args.checkpoint_every, strict=args.strict, resume=args.resume,
        overwrite=args.overwrite, progress=args.progress)
    executor = cluster_executor(args)  # None: the local pipeline, as always
    with sigterm_as_ctrl_c() as term:  # `kill PID`, a job scheduler: as Ctrl-C, then exit 143
        try:
            if executor is None:
                summary = convert(args.root, args.list, args.db, options)
            else:
                from datakit.convert.sharded import convert_sharded
                summary = convert_sharded(args.root, args.list, args.db, options, executor,
                                          partition_size=args.partition_size)
        except ConvertInterrupted as stop:
            command = resume_command(sys.argv)
            what = stop.how_stopped("stopped by SIGTERM" if term.seen else "interrupted", stop.at_once)
            if command is None:
                print(f"datakit: {stop}", file=sys.stderr)
            else:
                print(f"datakit: {what}; {stop.written} records are saved in {stop.partial}{stop.note}: to "
                      f"finish, run: {command}", file=sys.stderr)
            return EXIT_SIGTERM if term.seen else 130
        finally:
            if executor is not None:
                executor.close()
    if summary.already_complete:
        print(f"{args.db}: already complete ({summary.written} records); nothing to resume")
    else:
        print(summary.line())
    if args.report:
        write_report(args.report, summary.to_json())
    if summary.skipped:
        from datakit.warncap import TERMINAL_LIMIT

        above = "listed above" if len(summary.skipped) <= TERMINAL_LIMIT else f"the first {TERMINAL_LIMIT} listed above"
        where = f"; all of them in {args.report}" if args.report else "; --report FILE lists them all"
        print(f"{len(summary.skipped)} images skipped ({above}{where})", file=sys.stderr)
    return 0
