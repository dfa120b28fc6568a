"""`datakit merge DB OUT`: a sharded database (convert on a cluster) -> one LMDB / LevelDB Caffe reads."""

from __future__ import annotations

import argparse

HELP = ("Merge a sharded database (what `datakit convert --scheduler/--cluster` writes) into one LMDB or "
        "LevelDB that Caffe reads, records and keys unchanged.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("db", metavar="DB", help="sharded database folder (holding shards.json)")
    p.add_argument("out", metavar="OUT", help="the single database to write")
    p.add_argument("--backend", choices=["lmdb", "leveldb"], help="OUT's backend (default: the shards' own)")
    p.add_argument("--commit-every", type=int, default=1000, metavar="N",
                   help="records per transaction (default 1000, as convert)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (only once the new one is complete)")


def run(args: argparse.Namespace) -> int:
    from datakit.convert.merge import merge_shards
    from datakit.errors import ConfigError

    if args.commit_every < 1:
        raise ConfigError("--commit-every must be positive")
    count = merge_shards(args.db, args.out, backend=args.backend, commit_every=args.commit_every,
                         overwrite=args.overwrite)
    print(f"{args.db} -> {args.out}: {count} records")
    return 0
