"""cluster: convert and assemble on a Dask LocalCluster of 1 and 2 workers against the local path, same run.

convert: N synthetic JPEGs (made at benchmark time in a temporary folder, ~400 x 300, quality 90) to
raw 256 x 256 Datums in LMDB; local = ``datakit.convert.convert`` with 1 and 2 workers (one ordered
writer fed through shared memory); cluster = ``convert_sharded`` on ``local:1`` / ``local:2``
(each task decodes and writes its own shard), then ``datakit merge`` timed apart.
assemble: the demo manifest's first M images from a mirror on 127.0.0.1 (``--latency`` per response,
as a remote host would add); local = the default in-process run, cluster = ``local:1`` / ``local:2``.

The cluster's start-up (scheduler + worker processes) is timed apart and left out of the rates: a
real cluster is started once for many runs. Ratios are local / cluster seconds at equal workers
(1.0: the engine costs nothing; below 1: its overhead).

    python -m benchmarks.bench_cluster [--images 800] [--downloads 400] [--latency 0.02]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from datakit.assemble import AssembleConfig, assemble
from datakit.cluster import DaskExecutor
from datakit.convert import ConvertOptions, convert
from datakit.convert.merge import merge_shards
from datakit.convert.sharded import convert_sharded
from datakit.download import DownloadOptions
from datakit.manifest import open_manifest
from datakit.mirror import MirrorConfig, serve_mirror


def _images(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    lines = []
    for i in range(n):
        base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = cv2.resize(base, (400, 300), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(root / "img" / f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        lines.append(f"{i:05d}.jpg {i % 10}\n")
    (root / "list.txt").write_text("".join(lines))
    return root / "list.txt"


def _opts(workers: int) -> ConvertOptions:
    return ConvertOptions(resize_height=256, resize_width=256, workers=workers, progress=False)


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _one(workers: int, root: Path, lst: Path, warm: Path, rows: list, tmp: Path, args: argparse.Namespace,
         results: dict[str, float]) -> None:
    """Every timing at `workers` workers, local then cluster, into `results`."""
    results[f"convert local {workers}"] = _timed(
        lambda: convert(root, lst, tmp / f"local{workers}", _opts(workers), warn=lambda m: None))
    with serve_mirror(MirrorConfig.from_rows(rows, latency=args.latency)) as m:
        cfg = AssembleConfig(manifest="demo", out=tmp / f"a-local{workers}", images=args.downloads, seed=1,
                             mirror=m.url, progress=False, partition_size=50, dead_after=0,
                             options=DownloadOptions(concurrency=16, workers=workers))
        results[f"assemble local {workers}"] = _timed(lambda: assemble(cfg, log=lambda s: None))
    started = time.perf_counter()
    ex = DaskExecutor(local_workers=workers)
    results[f"cluster start {workers}"] = time.perf_counter() - started
    convert_sharded(root, warm, tmp / f"warm{workers}", _opts(1), ex, partition_size=10, warn=lambda m: None)
    try:
        results[f"convert cluster {workers}"] = _timed(
            lambda: convert_sharded(root, lst, tmp / f"sharded{workers}", _opts(1), ex,
                                    partition_size=max(50, args.images // (4 * workers)),
                                    warn=lambda m: None))
        results[f"merge {workers}"] = _timed(lambda: merge_shards(tmp / f"sharded{workers}",
                                                                  tmp / f"merged{workers}"))
        with serve_mirror(MirrorConfig.from_rows(rows, latency=args.latency)) as m:
            cfg = AssembleConfig(manifest="demo", out=tmp / f"a-cluster{workers}", images=args.downloads,
                                 seed=1, mirror=m.url, progress=False, partition_size=50, dead_after=0,
                                 options=DownloadOptions(concurrency=16, workers=workers))
            results[f"assemble cluster {workers}"] = _timed(lambda: assemble(cfg, log=lambda s: None,
                                                                             executor=ex))
    finally:
        ex.close()
    same = (tmp / f"merged{workers}" / "data.mdb").read_bytes() == (tmp / f"local{workers}" / "data.mdb").read_bytes()
    print(f"workers {workers}: merged database identical to the local one: {same}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=800)
    ap.add_argument("--downloads", type=int, default=400)
    ap.add_argument("--latency", type=float, default=0.02)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        lst = _images(tmp / "src", args.images)
        root = tmp / "src" / "img"
        rows = open_manifest("demo")[1]
        warm = tmp / "src" / "warm.txt"  # imports and first-call costs paid before anything is timed
        warm.write_text("".join(lst.read_text().splitlines(keepends=True)[:20]))
        convert(root, warm, tmp / "warm-local", _opts(1), warn=lambda m: None)
        with serve_mirror(MirrorConfig.from_rows(rows)) as m:
            assemble(AssembleConfig(manifest="demo", out=tmp / "warm-a", images=20, mirror=m.url, progress=False),
                     log=lambda s: None)
        results: dict[str, float] = {}
        from datakit.parallel import InlineExecutor
        results["convert shards inline"] = _timed(  # the partition function alone, no engine: decode + write serially
            lambda: convert_sharded(root, lst, tmp / "inline", _opts(1), InlineExecutor(),
                                    partition_size=max(50, args.images // 4), warn=lambda m: None))
        for workers in (1, 2):
            _one(workers, root, lst, warm, rows, tmp, args, results)
        for name, seconds in results.items():
            n = args.downloads if name.startswith("assemble") else args.images
            rate = f"{n / seconds:8.1f} /s" if not name.startswith(("cluster start", "merge")) else ""
            print(f"{name:22s} {seconds:7.2f} s {rate}")
        for stage in ("convert", "assemble"):
            for workers in (1, 2):
                ratio = results[f"{stage} local {workers}"] / results[f"{stage} cluster {workers}"]
                print(f"RATIO cluster_{stage}_{workers}w: {ratio:.2f} (local s / cluster s; 1.0 = no engine overhead)")
        print(f"RATIO cluster_convert_engine_1w: {results['convert shards inline'] / results['convert cluster 1']:.2f} "
              "(the same partitions in this process / on a 1-worker cluster: Dask's own cost)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
