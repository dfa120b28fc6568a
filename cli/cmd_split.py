"""`datakit split LIST OUT`: the transfer paper's class halves and reduced-volume lists."""

from __future__ import annotations

import argparse

HELP = ("Derived datasets from an image list: random class halves A/B (the paper's seeds), halves from "
        "two class index files, or the first N images per class.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("list", metavar="LIST", help="Caffe image list ('path label' lines, labels 0..K-1)")
    p.add_argument("out", metavar="OUT", help="output folder: OUT/A/files.txt + idxmap.txt and OUT/B/... "
                   "for halves, OUT/files.txt for --per-class; OUT/split.json describes the split")
    p.add_argument("--halves", nargs="+", metavar="FILE", default=None,
                   help="'random' (default): seeded random halves; or FILE_A FILE_B: two class index files")
    p.add_argument("--seed", type=int, default=0, help="seed of the random halves (the paper used 0..3)")
    p.add_argument("--per-class", type=int, metavar="N", help="keep the first N lines of each class instead")
    p.add_argument("--num-classes", type=int, metavar="K",
                   help="number of classes (default: from the list); use the same K for train and valid")


def run(args: argparse.Namespace) -> int:
    from datakit.splits import split_list

    result = split_list(args.list, args.out, halves=args.halves, seed=args.seed, per_class=args.per_class,
                        num_classes=args.num_classes)
    if result.mode == "per-class":
        print(f"{args.list}: first {result.per_class} per class of {result.num_classes} classes: "
              f"{result.counts['kept']} lines -> {args.out}/files.txt")
    else:
        sizes = ", ".join(f"{h}: {len(c)} classes, {result.counts[h]} lines" for h, c in result.groups.items())
        print(f"{args.list}: {result.mode} ({sizes}) -> {args.out}/A, {args.out}/B")
    return 0
