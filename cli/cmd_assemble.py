"""`datakit assemble`: download a seeded subset of a URL manifest and write Caffe's train.txt / test.txt."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common_options import add_cluster_flags, add_progress_flags, cluster_executor
from cli.sigterm import EXIT_SIGTERM, sigterm_as_ctrl_c
from datakit.assemble import AssembleConfig, assemble
from datakit.download import DownloadOptions

HELP = ("Download a manifest's images (Caffe's assemble_data.py, same seed = same subset) and write "
        "train.txt / test.txt; resumable, validated, with a local --mirror for offline use.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DownloadOptions()
    p.add_argument("--manifest", default="flickr_style",
                   help="recipe name (flickr_style, demo) or a CSV path (default: flickr_style)")
    p.add_argument("--out", default="data/flickr_style", help="output folder (default: data/flickr_style)")
    p.add_argument("-i", "--images", type=int, default=-1, help="number of images to use (-1: all, Caffe's default)")
    p.add_argument("-s", "--seed", type=int, default=0, help="random seed of the subset (Caffe's default 0)")
    p.add_argument("-l", "--labels", type=int, default=0, help="keep only labels < K (0: all)")
    p.add_argument("--mirror", metavar="URL", help="fetch every URL from this mirror (http://127.0.0.1:PORT), same path")
    p.add_argument("--rewrite", metavar="NAME", help="apply the recipe's URL rewrite rule NAME (flickr: live.staticflickr.com)")
    p.add_argument("--absolute-paths", action="store_true", help="write absolute image paths in the lists, as Caffe does")
    p.add_argument("--report", type=Path, help="write a JSON report of counts and failure kinds here")
    p.add_argument("--retry-failed", action="store_true", help="re-attempt only the rows in OUT/failed.csv")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help=f"requests in flight (default {d.concurrency})")
    p.add_argument("--per-host", type=int, default=d.per_host, help=f"requests in flight per host (default {d.per_host}; 0: no limit)")
    p.add_argument("--timeout", type=float, default=d.timeout, help=f"seconds per attempt (default {d.timeout:g})")
    p.add_argument("--read-timeout", type=float, default=d.read_timeout, help=f"seconds without new bytes (default {d.read_timeout:g})")
    p.add_argument("--retries", type=int, default=d.retries, help=f"extra attempts for transient failures (default {d.retries})")
    p.add_argument("--backoff", type=float, default=d.backoff, help=f"first retry delay in seconds, doubled each time (default {d.backoff:g})")
    p.add_argument("--max-bytes", type=int, default=d.max_bytes, help=f"largest image accepted (default {d.max_bytes})")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help=f"most pixels accepted (default {d.max_pixels})")
    p.add_argument("--max-redirects", type=int, default=d.max_redirects, help=f"(default {d.max_redirects})")
    p.add_argument("--resize", type=int, default=0, metavar="PIXELS", help="shrink images on the way in (0: keep as downloaded)")
    p.add_argument("--resize-mode", choices=["shorter", "longer"], default="shorter",
                   help="which side --resize sets (default: shorter)")
    p.add_argument("-w", "--workers", type=int, default=0, help="threads that validate and write images (0 or less: CPUs + 2; Caffe's -w -1 works)")
    p.add_argument("--dead-after", type=int, default=300,
                   help="stop when the first N attempts all fail (default 300; 0: never)")
    p.add_argument("--partition-size", type=int, default=1000, help="downloads per partition, the unit an executor runs (default 1000)")
    p.add_argument("--url-column", help="manifest column holding the URL (default image_url)")
    p.add_argument("--label-column", help="manifest column holding the label (default label)")
    p.add_argument("--split-column", help="manifest column holding train/test ('' : everything is train)")
    p.add_argument("--cache-dir", type=Path, help="where downloaded manifests are kept (default ~/.cache/datakit)")
    p.add_argument("--fsync", action="store_true", help="fsync every image (survives power loss, slower)")
    add_cluster_flags(p)
    add_progress_flags(p)


def run(args: argparse.Namespace) -> int:
    options = DownloadOptions(
        concurrency=args.concurrency, per_host=args.per_host, timeout=args.timeout, read_timeout=args.read_timeout,
        retries=args.retries, backoff=args.backoff, max_bytes=args.max_bytes, max_pixels=args.max_pixels,
        max_redirects=args.max_redirects, resize=args.resize, resize_mode=args.resize_mode, workers=args.workers,
        fsync=args.fsync)
    cfg = AssembleConfig(
        manifest=args.manifest, out=Path(args.out), images=args.images, seed=args.seed, labels=args.labels,
        mirror=args.mirror, rewrite=args.rewrite, absolute_paths=args.absolute_paths, report=args.report,
        retry_failed=args.retry_failed, dead_after=args.dead_after, partition_size=args.partition_size,
        url_column=args.url_column, label_column=args.label_column, split_column=args.split_column,
        cache_dir=args.cache_dir, progress=args.progress, options=options)
    cfg.validate()  # before a cluster is started or reached
    # SIGTERM: the same stop as Ctrl-C (finished images kept, failures filed, the summary printed), exit 143
    with sigterm_as_ctrl_c(to_sigint_handler=True) as term:
        executor = cluster_executor(args)  # None: partitions in this process, as always
        try:
            result = assemble(cfg, executor=executor)  # validates cfg (DownloadOptions.validate too) first
        finally:
            if executor is not None:
                executor.close()
    assert result.report is not None  # finish() always sets it; None only in a result built by hand
    print(result.report.line())
    if result.stopped == "interrupted":
        return EXIT_SIGTERM if term.seen else 130
    return 0
