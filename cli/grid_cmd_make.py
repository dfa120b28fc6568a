"""`trainer grid make OUT`: write a transfer study as net folders."""

from __future__ import annotations

import argparse

HELP = ("Write a transfer study as one folder per net: base nets on halves A and B, then BnB, BnB+, AnB, "
        "AnB+ for every n (optionally natural/man-made, random-frozen and reduced-volume nets).")


def _ints(text: str, option: str) -> list[int]:
    """'1-3,5' -> [1, 2, 3, 5]; a ConfigError naming `option` for anything else (a typo must not
    end in a traceback, nor be read as some other list)."""
    from datakit.errors import ConfigError

    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                out += list(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            raise ConfigError(f"{option} {text!r}: {part!r} is not a number or a range such as 1-7") from None
    if not out:
        raise ConfigError(f"{option} {text!r}: no numbers given (e.g. 1-7 or 1,10,100)")
    return out


def _classes(text: str) -> dict[str, int]:
    """'500' -> {'': 500}; 'A=449,B=551' -> per half; a ConfigError for anything else."""
    from datakit.errors import ConfigError

    def count(value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"--num-output {text!r}: {value.strip()!r} is not a class count "
                              "(give K, or A=K,B=K)") from None
    if "=" not in text:
        return {"": count(text)}
    out: dict[str, int] = {}
    for item in text.split(","):
        if "=" not in item:
            raise ConfigError(f"--num-output {text!r}: {item.strip()!r} is not HALF=K (give K, or A=K,B=K)")
        half, value = item.split("=", 1)
        out[half.strip()] = count(value)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="the grid folder to create")
    p.add_argument("--net", required=True, help="the base train/val net prototxt (TRAIN and TEST data layers)")
    p.add_argument("--solver", required=True, help="the solver every net uses (its net and snapshot_prefix are set per net)")
    p.add_argument("--data", required=True, metavar="TEMPLATE",
                   help="data source of a half, e.g. 'halves/{split}/{half}_{phase}_lmdb' ({phase}: train / test)")
    p.add_argument("--mean", metavar="TEMPLATE", help="mean file of a half, e.g. 'halves/{split}/{half}_mean.binaryproto'")
    p.add_argument("--splits", default="0", help="random split names (seeds), comma-separated (default 0)")
    p.add_argument("--pairs", default="AA,BB,AB,BA",
                   help="(source, target) halves of the transfer nets: XX gives BnB / BnB+, XY AnB / AnB+")
    p.add_argument("--layers", metavar="N,..", help="values of n, e.g. 1-7 (default 1 .. learnable layers - 1)")
    p.add_argument("--families", default="BnB,BnB+,AnB,AnB+", help="transfer families to make")
    p.add_argument("--natman", action="store_true", help="also the natural / man-made split (split name 'natman')")
    p.add_argument("--random-frozen", action="store_true", help="also nets whose first n layers are random and frozen")
    p.add_argument("--reduced", metavar="N,..", help="also nets on N images per class, e.g. 1,10,100")
    p.add_argument("--reduced-data", metavar="TEMPLATE", help="data of the reduced nets, with {per_class} and {phase}")
    p.add_argument("--reduced-mean", metavar="TEMPLATE",
                   help="mean file of the reduced nets (may name {per_class}; default --mean, unless that names "
                        "{split} or {half})")
    p.add_argument("--max-iter", type=int, help="iterations of every net (default: the solver's max_iter)")
    p.add_argument("--data-later", action="store_true",
                   help="make the grid although data or mean paths do not exist yet (converted later, or paths "
                        "that exist only where the grid runs): a warning instead of a refusal")
    p.add_argument("--num-output", metavar="K | A=K,B=K",
                   help="classes of the top layer: one count, or per half (e.g. A=449,B=551)")


def run(args: argparse.Namespace) -> int:
    from trainer.grid.make import GridPlan, make_grid

    plan = GridPlan(net=args.net, solver=args.solver, data=args.data, mean=args.mean,
                    splits=[s for s in args.splits.split(",") if s], pairs=[p for p in args.pairs.split(",") if p],
                    layers=_ints(args.layers, "--layers") if args.layers else None,
                    families=[f for f in args.families.split(",") if f], natman=args.natman,
                    random_frozen=args.random_frozen, reduced=_ints(args.reduced, "--reduced") if args.reduced else [],
                    reduced_data=args.reduced_data, reduced_mean=args.reduced_mean, max_iter=args.max_iter,
                    num_output=_classes(args.num_output) if args.num_output else {}, data_later=args.data_later)
    names = make_grid(args.out, plan)
    print(f"{args.out}: {len(names)} nets ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); "
          f"run them with: trainer grid run {args.out} --jobs N")
    return 0
