"""`datakit idx-export IMAGES LABELS OUT`: MNIST-style idx files to PNGs and a Caffe list."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common_options import add_progress_flags

HELP = ("Export idx(.gz) image/label files (MNIST's format) as PNG files plus a Caffe list, "
        "ready for `datakit convert --gray`.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", help="idx image file, e.g. t10k-images-idx3-ubyte.gz")
    p.add_argument("labels", help="idx label file, e.g. t10k-labels-idx1-ubyte.gz")
    p.add_argument("out", help="output root folder (the ROOT to give `datakit convert`)")
    p.add_argument("--list", dest="list_path",
                   help="list file to write (default OUT/list.txt); paths in it are relative to OUT")
    p.add_argument("--subdir", default="images", help="folder under OUT for the PNGs (default: images)")
    p.add_argument("--limit", type=int, help="export only the first N images")
    add_progress_flags(p)


def run(args: argparse.Namespace) -> int:
    from datakit.idx import export_images, read_mnist

    images, labels = read_mnist(args.images, args.labels)
    list_path = Path(args.list_path) if args.list_path else Path(args.out) / "list.txt"
    count = export_images(images, labels, args.out, list_path, subdir=args.subdir, limit=args.limit,
                          progress=args.progress)
    print(f"wrote {count} images under {Path(args.out) / args.subdir} and the list {list_path}")
    return 0
