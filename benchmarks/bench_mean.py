"""mean: `datakit mean` against Caffe's `compute_image_mean` on the same LMDB, start-up included.

Workload: an LMDB of raw 3x256x256 Datums built at benchmark time in a
temporary folder from crops of the real photos in shared/data/photos (2,000
records by default, the size of the issue's anchor figure), read once to warm
the page cache, deleted afterwards.

Baselines, measured in the same run:

* `compute_image_mean`: no Caffe binary is installed here, so the benchmark
  compiles benchmarks/baselines/compute_image_mean.c (gcc -O2, liblmdb: Debian's
  liblmdb-dev), which does what Caffe's tool does for raw Datums: an LMDB
  cursor over every record, a protobuf-style parse that copies the pixels out
  of the map, a float accumulator, one division at the end. Both it and
  `datakit mean` run as fresh processes (the installed console script, start-up
  included), alternating, `--rounds` times; the ratio is of the medians.
  Without gcc or lmdb.h that row is skipped with the reason (the issue's own
  figure: compute_image_mean 0.20 s for 2,000 records on an Intel Xeon).
* a one-process NumPy loop (protobuf `Datum.FromString` per record, float64
  sum), against `compute_mean` called in this process (no start-up).

`--large N` (default 20,000) builds a second database and reports the
throughput of `datakit mean` (and of the C baseline) on it; 0 skips it.

    python -m benchmarks.bench_mean [--records 2000] [--rounds 7] [--large 20000] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from datakit.db.lmdb_backend import LmdbReader, LmdbWriter
from datakit.formats import caffe_pb2
from datakit.formats.datum import encode_datum
from datakit.mean import compute_mean

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DATAKIT_SHARED", ROOT.parent / "shared")) / "data"
BASELINE_C = Path(__file__).resolve().parent / "baselines" / "compute_image_mean.c"
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


def warm(db: Path) -> None:
    with open(db / "data.mdb", "rb") as fh:  # the page cache, for every way alike
        while fh.read(64 << 20):
            pass


def compile_baseline(out: Path) -> tuple[Path | None, str]:
    """The C compute_image_mean, compiled here; (None, why) where it cannot be."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None, "no C compiler (gcc) on PATH"
    exe = out / "compute_image_mean"
    proc = subprocess.run([cc, "-O2", "-o", str(exe), str(BASELINE_C), "-llmdb"], capture_output=True, text=True)
    if proc.returncode != 0:
        return None, f"could not compile {BASELINE_C.name} (needs liblmdb-dev): {proc.stderr.strip().splitlines()[-1:]}"
    return exe, ""


def datakit_command() -> list[str]:
    """The installed console script next to this interpreter (what a user runs), else the module."""
    script = Path(sys.executable).parent / "datakit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.datakit_main"]


CPU_SECONDS: dict[str, list[float]] = {}  # user + system seconds of each child, by tool: what the load moves least


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], tool: str = "") -> tuple[float, str]:
    cpu, t = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    if tool:
        CPU_SECONDS.setdefault(tool, []).append(_children_cpu() - cpu)
    return dt, proc.stdout


def channel_means(stdout: str) -> list[float]:
    """The 'mean_value channel [c]: v' lines both tools print."""
    return [float(line.rsplit(":", 1)[1]) for line in stdout.splitlines() if line.startswith("mean_value channel")]


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


def against_compute_image_mean(db: Path, exe: Path | None, why: str, out: Path, rounds: int, workers: int,
                               records: int) -> None:
    ours_cmd = datakit_command() + ["mean", str(db), str(out / "mean.binaryproto"), "--no-progress"]
    if workers:
        ours_cmd += ["--workers", str(workers)]
    ours: list[float] = []
    theirs: list[float] = []
    for r in range(rounds):
        if exe is not None:
            dt_c, out_c = timed([str(exe), str(db)], "c")
            theirs.append(dt_c)
        dt, out_ours = timed(ours_cmd, "datakit")
        ours.append(dt)
        if exe is not None and r == 0:  # the same means (C sums in float32, as Caffe does)
            np.testing.assert_allclose(channel_means(out_ours), channel_means(out_c), rtol=1e-4)
        print(f"  round {r + 1}: " + (f"compute_image_mean (C) {dt_c:.3f} s   " if exe is not None else "")
              + f"datakit mean {dt:.3f} s", flush=True)
    med = statistics.median(ours)
    print(f"datakit mean, {records} records, fresh process: median {med:.3f} s, best {min(ours):.3f} s "
          f"({records / med:.0f} records/s); CPU (user+sys, pool workers included) median "
          f"{statistics.median(CPU_SECONDS['datakit']):.3f} s")
    if exe is None:
        print(f"compute_image_mean baseline skipped: {why}; the issue's figure is 0.20 s for 2,000 records "
              "(Intel Xeon, real Caffe)")
        return
    med_c = statistics.median(theirs)
    print(f"compute_image_mean (C stand-in), same records: median {med_c:.3f} s, best {min(theirs):.3f} s; "
          f"CPU median {statistics.median(CPU_SECONDS['c']):.3f} s")
    print(f"RATIO mean_vs_compute_image_mean: {med_c / med:.2f} (target 1.0; > 1 is faster than Caffe's tool)")


def large_throughput(tmp: Path, records: int, exe: Path | None, workers: int) -> None:
    db = tmp / "large"
    t = time.perf_counter()
    build_db(db, records, seed=1)
    warm(db)
    gb = records * 3 * SIZE * SIZE / 1e9
    print(f"large: {records} records ({gb:.2f} GB of pixels) built in {time.perf_counter() - t:.1f} s")
    cmd = datakit_command() + ["mean", str(db), str(tmp / "large.binaryproto"), "--no-progress"]
    if workers:
        cmd += ["--workers", str(workers)]
    best = min(timed(cmd)[0] for _ in range(2))
    print(f"large: datakit mean {best:.2f} s, {gb / best:.2f} GB/s, {records / best:.0f} records/s (best of 2)")
    if exe is not None:
        best_c = min(timed([str(exe), str(db)])[0] for _ in range(2))
        print(f"large: compute_image_mean (C) {best_c:.2f} s, {gb / best_c:.2f} GB/s, {records / best_c:.0f} records/s")
        print(f"RATIO mean_large_vs_compute_image_mean: {best_c / best:.2f} (target 1.0)")
    shutil.rmtree(db, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench_mean")
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7, help="alternating fresh-process runs of each tool")
    ap.add_argument("--large", type=int, default=20000, help="records of the throughput database (0 = skip)")
    ap.add_argument("--workers", type=int, default=0, help="datakit mean --workers (0 = its own choice)")
    ap.add_argument("--repeat", type=int, default=2, help="best of N in-process runs against the NumPy loop")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_mean_"))
    try:
        db = tmp / "db"
        t = time.perf_counter()
        build_db(db, args.records)
        warm(db)
        gb = args.records * 3 * SIZE * SIZE / 1e9
        print(f"{args.records} records of 3x{SIZE}x{SIZE} ({gb:.2f} GB of pixels) built in "
              f"{time.perf_counter() - t:.1f} s; {os.cpu_count()} CPUs")
        exe, why = compile_baseline(tmp)
        against_compute_image_mean(db, exe, why, tmp, args.rounds, args.workers, args.records)

        best_loop = best_ours = float("inf")
        for r in range(args.repeat):
            dt_loop, ref = numpy_loop(db)
            t = time.perf_counter()
            result = compute_mean(db, workers=args.workers, progress=False)
            dt_ours = time.perf_counter() - t
            assert result.count == args.records
            np.testing.assert_allclose(result.mean.ravel(), ref, rtol=0, atol=1e-9)
            best_loop, best_ours = min(best_loop, dt_loop), min(best_ours, dt_ours)
            print(f"  in-process run {r + 1}: numpy loop {gb / dt_loop:5.2f} GB/s   compute_mean {gb / dt_ours:5.2f} GB/s",
                  flush=True)
        print(f"numpy float64 loop (1 process): {gb / best_loop:.2f} GB/s, {args.records / best_loop:.0f} records/s")
        print(f"compute_mean in this process: {gb / best_ours:.2f} GB/s, {args.records / best_ours:.0f} records/s")
        print(f"RATIO mean_vs_numpy_loop: {best_loop / best_ours:.2f} (target 1.0)")
        print(f"RATIO mean_GBps: {gb / best_ours:.2f} (target 1.5)")
        shutil.rmtree(db, ignore_errors=True)
        if args.large:
            large_throughput(tmp, args.large, exe, args.workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
