"""``datakit merge DB OUT``: a sharded database (datakit.db.sharded_backend) -> one Caffe-readable LMDB / LevelDB.

The records are copied in key order, unchanged, through the backend's Writer
in the transactions a local ``datakit convert`` makes (``commit_every``
records or ``commit_bytes`` of values, whichever comes first), so the result
holds the bytes a local conversion of the same list (without ``--shuffle``,
or with the same ``--seed``) writes. The output is built at
``OUT.incomplete`` and renamed to ``OUT`` when complete; its progress file is
the sharded database's, marked as merged.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from datakit.atomic import install_dir, write_text_atomic
from datakit.db import BACKENDS, PROGRESS_NAME, incomplete_path, open_reader, open_writer, read_progress
from datakit.db.sharded_backend import ShardedReader
from datakit.errors import ConfigError, DatabaseError

__all__ = ["merge_shards"]


def merge_shards(src: str | os.PathLike, out: str | os.PathLike, *, backend: str | None = None,
                 commit_every: int = 1000, commit_bytes: int = 8 << 20, overwrite: bool = False) -> int:
    """Write every record of the sharded database `src` into a single database `out`; returns the count.

    `backend`: the output's (default: the shards' own).
    """
    src, final = Path(src), Path(out)
    reader = open_reader(src)
    try:
        if not isinstance(reader, ShardedReader):
            raise ConfigError(f"{src}: not a sharded database (no shards.json); nothing to merge")
        name = backend or reader.index["backend"]
        if name not in BACKENDS or not BACKENDS[name].writable or BACKENDS[name].record_kind != "datum":
            raise ConfigError(f"--backend {name}: a merge writes Datums into lmdb or leveldb")
        if final.exists() and not overwrite:
            raise DatabaseError(f"{final}: already exists; pass --overwrite to replace it")
        if final.resolve() == src.resolve():
            raise ConfigError(f"{src}: input and output are the same database")
        work = incomplete_path(final)
        if work.exists():
            shutil.rmtree(work)  # a merge is cheap to redo: no resume
        writer = open_writer(name, work)
        count = handed = 0
        batch: list[tuple[bytes, bytes]] = []
        batch_bytes = 0
        try:
            for key, value in reader.raw_items():
                batch.append((key, value))
                batch_bytes += len(value)
                count += 1
                if len(batch) >= writer.batch_limit(handed, commit_every) or batch_bytes >= commit_bytes:
                    writer.write(batch)
                    handed += len(batch)
                    batch, batch_bytes = [], 0
            writer.write(batch)
            writer.sync()
            writer.finish(final)
        finally:
            writer.close()
        progress = dict(read_progress(src) or {}) | {"merged_from": str(src.resolve()), "status": "complete"}
        progress["options"] = dict(progress.get("options", {})) | {"backend": name}
        progress.pop("sharded", None)
        progress["shards"] = 0
        write_text_atomic(work / PROGRESS_NAME, json.dumps(progress, indent=1) + "\n")
        install_dir(work, final)
    finally:
        reader.close()
    return count
