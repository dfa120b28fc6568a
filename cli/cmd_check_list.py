"""`datakit check-list LIST`: validate a Caffe image list before converting or training."""

from __future__ import annotations

import argparse
import sys

from datakit.imagelist import check_list

HELP = "Check a Caffe image list ('path label' lines): labels 0..K-1, safe paths, duplicates, files."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("list", help="the list file (Caffe format: 'relative/path label' per line)")
    p.add_argument("--root", help="image root folder; with it, every listed file must exist")
    p.add_argument("--allow-label-gaps", action="store_true",
                   help="accept labels that do not start at 0 or skip values")
    p.add_argument("--allow-absolute", action="store_true",
                   help="accept absolute paths (Caffe's absolute-path lists)")


def run(args: argparse.Namespace) -> int:
    result = check_list(args.list, root=args.root, allow_label_gaps=args.allow_label_gaps,
                        check_files=args.root is not None, allow_absolute=args.allow_absolute)
    if result.ok:
        print(result.summary())
        return 0
    for problem in result.problems:
        print(problem, file=sys.stderr)
    return 1
