"""`datakit inspect DB`: count, shapes, label histogram and a contact sheet of a database."""

from __future__ import annotations

import argparse
import json

from cli.common_options import add_backend_flag, add_progress_flags

HELP = "Summarise a database (count, shapes, labels) and optionally write a contact sheet PNG of samples."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("db", help="database: LMDB/LevelDB folder, HDF5 .h5 / .txt list / folder")
    add_backend_flag(p, help="default: detected")
    p.add_argument("--contact-sheet", metavar="PNG", help="write a grid of sample records, labelled, to PNG")
    p.add_argument("--samples", type=int, default=64, help="records on the contact sheet (default 64)")
    p.add_argument("--cell", type=int, default=96, help="contact-sheet cell size in pixels (default 96)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_progress_flags(p)


def run(args: argparse.Namespace) -> int:
    from datakit.summary import inspect_db, write_contact_sheet

    summary, samples = inspect_db(args.db, args.backend, samples=args.samples if args.contact_sheet else 0,
                                  progress=args.progress)
    if args.json:
        print(json.dumps(summary.to_json(), indent=1))
    else:
        print("\n".join(summary.lines()))
    if args.contact_sheet and samples:
        write_contact_sheet(args.contact_sheet, samples, cell=args.cell)
        if not args.json:
            print(f"contact sheet of {len(samples)} records -> {args.contact_sheet}")
    return 0
