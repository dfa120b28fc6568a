"""`datakit upgrade IN OUT`: Caffe's upgrade_net_proto_text / upgrade_net_proto_binary."""

from __future__ import annotations

import argparse

HELP = "Rewrite an old (V0/V1) net prototxt, solver or .caffemodel in the current Caffe form."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="old prototxt / solver / .caffemodel")
    p.add_argument("output", help="where to write the upgraded file (same kind)")


def run(args: argparse.Namespace) -> int:
    from datakit.formats.describe import upgrade_file

    kind = upgrade_file(args.input, args.output)
    print(f"wrote upgraded {kind} to {args.output}")
    return 0
