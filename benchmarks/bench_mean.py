"""mean: GB/s of uint8 pixels summed by `datakit mean` over an LMDB of 256x256x3 raw Datums.

Baseline, in the same run: one process that parses each record with protobuf
(as compute_image_mean's ParseFromString) and adds it into a float64 sum with
numpy. Caffe's compute_image_mean sums about 1.2-1.9 GB/s single-threaded on
these machines; the target for `datakit mean` is >= 1.5 GB/s on 2 cores.
The database is built at benchmark time in a temporary folder from crops of
the real photos in shared/data/photos, read once to warm the page cache for
both ways, and deleted afterwards.

    python -m benchmarks.bench_mean [--records 4000] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from datakit.parallel import default_workers
from datakit.formats.datum import encode_datum
from datakit.db.lmdb_backend import LmdbReader, LmdbWriter
from datakit.formats import caffe_pb2
from datakit.mean import compute_mean

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DATAKIT_SHARED", ROOT.parent / "shared")) / "data"
SIZE = 256


def build_db(db: Path, records: int, seed: int = 0) -> None:
    photos = sorted((SHARED / "photos").rglob("*.jpg"))
    if not photos:
        raise SystemExit(f"no photos under {SHARED / 'photos'} (set DATAKIT_SHARED)")
    sources = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in photos]
    rng = np.random.default_rng(seed)
    writer = LmdbWriter(db, map_size=records * 200_000 + (64 << 20))
    batch = []
    for i in range(records):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        side = int(min(h, w) * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        img = cv2.resize(src[y:y + side, x:x + side], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        batch.append((f"{i:08d}_photo{i}.jpg".encode(), encode_datum(np.ascontiguousarray(img.transpose(2, 0, 1)), i % 20)))
        if len(batch) == 1000:
            writer.write(batch)
            batch = []
    writer.write(batch)
    writer.close()


def numpy_loop(db: Path) -> tuple[float, np.ndarray]:
    """One process: protobuf parse + float64 accumulate, record by record."""
    started = time.perf_counter()
    total = None
    count = 0
    with LmdbReader(db) as reader:
        for _, value in reader.raw_items():
            datum = caffe_pb2.Datum.FromString(value)
            pixels = np.frombuffer(datum.data, np.uint8)
            if total is None:
                total = np.zeros(pixels.size, np.float64)
            total += pixels
            count += 1
    return time.perf_counter() - started, total / count


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench_mean")
    ap.add_argument("--records", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=0, help="0 = all cores")
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs of each way")
    args = ap.parse_args(argv)
    workers = args.workers or default_workers()
    tmp = Path(tempfile.mkdtemp(prefix="bench_mean_"))
    try:
        db = tmp / "db"
        t = time.perf_counter()
        build_db(db, args.records)
        gb = args.records * 3 * SIZE * SIZE / 1e9
        with open(db / "data.mdb", "rb") as fh:  # warm the page cache for both ways
            while fh.read(64 << 20):
                pass
        print(f"{args.records} records of 3x{SIZE}x{SIZE} ({gb:.2f} GB of pixels) built in "
              f"{time.perf_counter() - t:.1f} s; {workers} workers, {os.cpu_count()} CPUs")
        best_loop = best_ours = float("inf")
        for r in range(args.repeat):
            dt_loop, ref = numpy_loop(db)
            t = time.perf_counter()
            result = compute_mean(db, workers=workers, progress=False)
            dt_ours = time.perf_counter() - t
            assert result.count == args.records
            np.testing.assert_allclose(result.mean.ravel(), ref, rtol=0, atol=1e-9)
            best_loop, best_ours = min(best_loop, dt_loop), min(best_ours, dt_ours)
            print(f"  run {r + 1}: numpy loop {gb / dt_loop:5.2f} GB/s   datakit mean {gb / dt_ours:5.2f} GB/s", flush=True)
        print(f"numpy float64 loop (1 process): {gb / best_loop:.2f} GB/s, {args.records / best_loop:.0f} records/s")
        print(f"datakit mean ({workers} workers): {gb / best_ours:.2f} GB/s, {args.records / best_ours:.0f} records/s")
        print(f"RATIO mean_vs_numpy_loop: {best_loop / best_ours:.2f} (target 1.0)")
        print(f"RATIO mean_GBps: {gb / best_ours:.2f} (target 1.5)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
