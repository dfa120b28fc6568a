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
    p.add_argument("--seed", type=int, help="seed of the random halves (default 0; the paper used 0..3)")
    p.add_argument("--per-class", type=int, metavar="N", help="keep the first N lines of each class instead")
    p.add_argument("--num-classes", type=int, metavar="K",
                   help="number of classes (default: from the list); use the same K for train and valid")


def run(args: argparse.Namespace) -> int:
    from datakit.errors import ConfigError
    from datakit.splits import split_list

    random_halves = args.per_class is None and args.halves in (None, ["random"])
    if args.seed is not None and not random_halves:
        # Only random halves draw anything: a seed given with the others was dropped with no word.
        what = "--per-class keeps the first N lines of each class" if args.per_class is not None \
            else "--halves FILE_A FILE_B takes the classes the files name"
        raise ConfigError(f"--seed: only random halves are seeded; {what}")
    seed = 0 if args.seed is None else args.seed
    result = split_list(args.list, args.out, halves=args.halves, seed=seed, per_class=args.per_class,
                        num_classes=args.num_classes)
    if result.mode == "per-class":
        print(f"{args.list}: first {result.per_class} per class of {result.num_classes} classes: "
              f"{result.counts['kept']} lines -> {args.out}/files.txt")
    else:
        sizes = ", ".join(f"{h}: {len(c)} classes, {result.counts[h]} lines" for h, c in result.groups.items())
        print(f"{args.list}: {result.mode} ({sizes}) -> {args.out}/A, {args.out}/B")
    return 0
