"""`datakit check-list LIST`: validate a Caffe image list before converting or training."""

from __future__ import annotations

import argparse
import sys

from datakit.imagelist import check_list
from datakit.warncap import WarningCap, missing_under_root

HELP = "Check a Caffe image list ('path label' lines): labels 0..K-1, safe paths, duplicates, files."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("list", help="the list file (Caffe format: 'relative/path label' per line)")
    p.add_argument("--root", help="image root folder; with it, every listed file must exist")
    p.add_argument("--allow-label-gaps", action="store_true",
                   help="accept labels that do not start at 0 or skip values")
    p.add_argument("--allow-absolute", action="store_true",
                   help="accept absolute paths (Caffe's absolute-path lists)")
    p.add_argument("--report", metavar="JSON",
                   help="write every problem found (the terminal shows the first 10 of each kind)")


def run(args: argparse.Namespace) -> int:
    from datakit.report import write_report

    result = check_list(args.list, root=args.root, allow_label_gaps=args.allow_label_gaps,
                        check_files=args.root is not None, allow_absolute=args.allow_absolute)
    if args.report:
        write_report(args.report, {"list": args.list, "root": args.root, "records": len(result.entries),
                                   "ok": result.ok and bool(result.entries), "counts": dict(result.counts),
                                   "problems": result.problems, "warnings": result.warnings})
    if result.ok and not result.entries:
        print(f"{args.list}: lists no images (the file is empty or holds only blank lines)", file=sys.stderr)
        return 1
    if result.ok:
        print(result.summary())
        return 0

    def stderr(message: str) -> None:
        print(message, file=sys.stderr)

    wrong_root = missing_under_root(result.counts["missing-file"], len(result.entries), args.root, "--root")
    problems = result.problems
    if wrong_root is not None:
        # Under a wrong root every file is missing: one of them shows the path tried, the rest would
        # be a flood before the line that says what is wrong. Other problems are still listed.
        missing = set(result.missing)
        problems = [p for p in problems if p not in missing]
        wrong_root += (f" (the first: {result.missing[0]})" if result.missing else "") + \
            (f"; all of them in {args.report}" if args.report else "; --report FILE lists them all")
    cap = WarningCap(stderr, "problems", where_all=args.report or "", hint="--report FILE lists them all")
    for problem in problems:
        cap(problem)
    cap.finish()
    if wrong_root is not None:
        stderr(wrong_root)
    elif cap.hidden:
        stderr(f"{args.list}: {len(result.problems)} problems in {len(result.entries)} records")
    return 1
