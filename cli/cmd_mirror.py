"""`datakit mirror`: serve a manifest's images on 127.0.0.1 (from a folder or synthesised), with fault injection."""

from __future__ import annotations

import argparse

from datakit.mirror import FAULT_KINDS, MirrorConfig, run_mirror

HELP = ("Serve a manifest's image URLs locally (files from a folder, or synthetic per-label 'styles'), "
        "optionally injecting latency and faults; prints the URL and runs until stopped.")


def _fault(text: str) -> tuple[str, float]:
    kind, _, rate = text.partition("=")
    try:
        value = float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KIND=RATE, e.g. not_found=0.05, got {text!r}") from None
    if kind not in FAULT_KINDS or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: KIND is one of {', '.join(FAULT_KINDS)}; RATE in 0..1")
    return kind, value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", help="recipe name or CSV whose URLs to serve (labels pick the synthetic style)")
    p.add_argument("--url-column", help="manifest column holding the URL (default image_url), as for assemble")
    p.add_argument("--label-column", help="manifest column holding the label (default label)")
    p.add_argument("--split-column", help="manifest column holding the split ('': none)")
    p.add_argument("--cache-dir", help="where downloaded manifests are kept (default ~/.cache/datakit)")
    p.add_argument("--directory", help="serve files from this folder (matched by the URL's last path component)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic images and of fault placement")
    p.add_argument("--latency", type=float, default=0.0, metavar="MS", help="milliseconds added to every response")
    p.add_argument("--fault", type=_fault, action="append", default=[], metavar="KIND=RATE",
                   help=f"inject a fault on this fraction of paths; repeatable. KIND: {', '.join(FAULT_KINDS)}")
    p.add_argument("--any-path", action="store_true", help="answer every path, not only the manifest's")
    p.add_argument("--num-labels", type=int, default=5, help="labels for paths outside the manifest (default 5)")
    p.add_argument("--drip-interval", type=float, default=1.0, help="seconds between pieces of a 'drip' body")


def run(args: argparse.Namespace) -> int:
    columns = {"url_column": args.url_column, "label_column": args.label_column, "split_column": args.split_column}
    config = MirrorConfig.for_manifest(args.manifest, directory=args.directory, any_path=args.any_path,
                                       cache_dir=args.cache_dir, columns=columns,
                                       seed=args.seed, faults=dict(args.fault), latency=args.latency / 1000.0,
                                       num_labels=args.num_labels, drip_interval=args.drip_interval)
    try:
        run_mirror(config, args.host, args.port, announce=lambda url: print(url, flush=True))
    except KeyboardInterrupt:
        pass
    return 0
