"""`datakit describe FILE`: what a Caffe file holds."""

from __future__ import annotations

import argparse

HELP = "Summarise a Caffe file: net or solver prototxt, .caffemodel(.h5), .binaryproto/.npy mean, .solverstate(.h5)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the file to describe")


def run(args: argparse.Namespace) -> int:
    from datakit.formats.describe import describe

    for line in describe(args.file):
        print(line)
    return 0
