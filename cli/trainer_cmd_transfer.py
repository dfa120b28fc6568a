"""`trainer transfer NET --layers N (--frozen | --fine-tune) -o OUT`: one transferred net."""

from __future__ import annotations

import argparse

HELP = ("Build a transferred net from a base net prototxt: the first N learnable layers keep their names "
        "(so --weights copies them), frozen or fine-tuned; the layers above are renamed <name>-new.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("net", metavar="NET.prototxt", help="the base net (train/val or train net; any Caffe generation)")
    p.add_argument("--layers", "-n", type=int, required=True, metavar="N",
                   help="how many learnable layers to copy from the base (counted in the net's order)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--frozen", action="store_true", help="copied layers get lr_mult 0 and decay_mult 0")
    mode.add_argument("--fine-tune", action="store_true", help="copied layers keep the base's multipliers")
    p.add_argument("-o", "--output", required=True, metavar="OUT.prototxt", help="where to write the net")
    p.add_argument("--source", help="data source of data layers without a phase rule (a 2014 train or val net)")
    p.add_argument("--train-source", help="data source of the TRAIN-phase data layers")
    p.add_argument("--test-source", help="data source of the TEST-phase data layers")
    p.add_argument("--mean", metavar="MEAN_FILE", help="mean_file of the data layers (replaces mean_value)")
    p.add_argument("--num-output", type=int, metavar="K", help="outputs of the top learnable layer (target classes)")
    p.add_argument("--keep-names", action="store_true",
                   help="rename nothing (the paper's random-frozen control: train with no --weights)")


def run(args: argparse.Namespace) -> int:
    from datakit.formats.prototxt import read_net, write_prototxt
    from trainer.transfer import TransferSpec, check_sources, learnable_layers, transfer_net

    base = read_net(args.net)
    spec = TransferSpec(layers=args.layers, frozen=args.frozen, source=args.source,
                        train_source=args.train_source, test_source=args.test_source, mean_file=args.mean,
                        num_output=args.num_output, keep_names=args.keep_names)
    check_sources(base, spec)
    net = transfer_net(base, spec)
    write_prototxt(args.output, net)
    names = [layer.name for layer in learnable_layers(base)]
    kept, new = names[:args.layers], names[args.layers:]
    how = "frozen" if args.frozen else "fine-tuned"
    print(f"{args.output}: {', '.join(kept) or 'no layer'} {how}"
          + ("" if args.keep_names or not new else f"; {', '.join(n + '-new' for n in new)} fresh"))
    return 0
