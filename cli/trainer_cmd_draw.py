"""`trainer draw NET.prototxt -o net.svg`: a picture of a net (Caffe's python/draw_net.py)."""

from __future__ import annotations

import argparse

HELP = "Draw a net prototxt as a graph (layers as boxes, blobs between them) to SVG, PNG, PDF or DOT."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("net", help="net prototxt (train_val, deploy, any generation)")
    p.add_argument("-o", "--output", default="net.svg",
                   help="file to write; the format follows the suffix: .svg .png .pdf (Graphviz's dot), .dot/.gv (source)")
    p.add_argument("--rankdir", choices=("LR", "TB", "RL", "BT"), default="LR",
                   help="direction of the graph: LR left to right (default, as draw_net.py), TB top to bottom")
    p.add_argument("--blobs", choices=("edges", "nodes"), default="edges",
                   help="blobs as labelled edges between layers (default) or as octagons of their own (draw_net.py's look)")
    p.add_argument("--phase", choices=("TRAIN", "TEST", "ALL"), default="ALL",
                   help="draw only the layers of this phase (include/exclude rules); ALL draws every layer (default)")


def run(args: argparse.Namespace) -> int:
    from datakit.formats import caffe_pb2
    from trainer.draw import draw_file

    from cli.trainer_options import check_exists

    check_exists(args.net, "net prototxt")
    phase = None if args.phase == "ALL" else getattr(caffe_pb2, args.phase)
    drawing = draw_file(args.net, args.output, rankdir=args.rankdir, phase=phase, blobs=args.blobs)
    print(f"wrote {args.output}: {len(drawing.layer_names)} layers, {len(drawing.blobs)} blobs")
    return 0
