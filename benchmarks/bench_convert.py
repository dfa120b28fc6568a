"""convert: images/s converting 2000 JPEGs (~500 px) to 256x256 raw Datums in LMDB.

Three ways, in the same run, on the same files (read once beforehand so every
way reads from the page cache):
  (a) loop:    one process, decode + resize + serialize + LMDB put in a loop,
               committing every 1000: the way Caffe's convert_imageset works;
  (b) ceiling: decode + resize only (nothing written) in a pool of all cores:
               the most any converter could do on this machine;
  ours:        `datakit convert` (datakit.convert.convert) with default workers.
Targets: ours >= 1.8x (a) on 2 cores, and >= 85% of (b).

It also measures (c) the CPU that writing alone costs: the same number of
196 KB Datums put into an LMDB by datakit's writer (commits of 8 MB, a flush
every 64 MB, written pages dropped from the page cache, as `datakit convert`
does), nothing decoded. The ceiling pays
none of it, so cores / (CPU per image of the ceiling + of writing) bounds any
converter that writes on this machine; the benchmark prints that bound too.

The JPEGs are made at benchmark time in a temporary folder from the real
photos in shared/data/photos (random crops, scales and flips, quality 90) and
deleted afterwards; nothing generated is committed.

    python -m benchmarks.bench_convert [--images 2000] [--size 256] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from datakit.convert import ConvertOptions, convert
from datakit.parallel import default_workers, worker_pool
from datakit.formats.datum import encode_datum

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DATAKIT_SHARED", ROOT.parent / "shared")) / "data"


def machine_cpu() -> dict[str, float]:
    """Seconds of the whole machine's CPU time so far, from /proc/stat: busy (user + system), idle, steal.

    Steal is time the hypervisor ran something else on our virtual CPUs. On
    the development VM the host's disk emulation runs there, so a converter
    that writes pays for its disk traffic in steal, which getrusage never
    shows; the ceiling writes nothing and pays none.
    """
    try:
        with open("/proc/stat") as fh:
            f = [int(x) / os.sysconf("SC_CLK_TCK") for x in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return {"busy": 0.0, "idle": 0.0, "steal": 0.0}
    return {"busy": f[0] + f[1] + f[2] + f[5] + f[6], "idle": f[3] + f[4], "steal": f[7]}


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[tuple[str, int]]:
    """`count` JPEGs of about 500 px (longer side 420-580) cut from the real photos."""
    photos = sorted((SHARED / "photos").rglob("*.jpg"))
    if not photos:
        raise SystemExit(f"no photos under {SHARED / 'photos'} (set DATAKIT_SHARED)")
    sources = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in photos]
    rng = np.random.default_rng(seed)
    entries = []
    (folder / "img").mkdir(parents=True)
    for i in range(count):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = src[y:y + ch, x:x + cw]
        scale = rng.uniform(420, 580) / max(ch, cw)
        crop = cv2.resize(crop, (max(1, round(cw * scale)), max(1, round(ch * scale))), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        rel = f"img/{i:05d}.jpg"
        cv2.imwrite(str(folder / rel), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
        entries.append((rel, i % 20))
    return entries


def loop_baseline(root: Path, entries, db: Path, size: int) -> float:
    """convert_imageset's way: one process, one record after another."""
    import lmdb
    started = time.perf_counter()
    env = lmdb.open(str(db), map_size=1 << 34, subdir=True)
    txn = env.begin(write=True)
    for i, (rel, label) in enumerate(entries):
        img = cv2.imread(str(root / rel), cv2.IMREAD_COLOR)
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
        txn.put(f"{i:08d}_{rel}".encode(), encode_datum(np.ascontiguousarray(img.transpose(2, 0, 1)), label))
        if (i + 1) % 1000 == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()
    env.sync(True)
    env.close()
    return time.perf_counter() - started


_ROOT: Path | None = None
_SIZE = 256


def _decode_resize(rels: list[str]) -> int:
    for rel in rels:
        img = cv2.imread(str(_ROOT / rel), cv2.IMREAD_COLOR)
        cv2.resize(img, (_SIZE, _SIZE), interpolation=cv2.INTER_LINEAR)
    return len(rels)


def _init(root: Path, size: int) -> None:
    global _ROOT, _SIZE
    _ROOT, _SIZE = root, size


def ceiling(root: Path, entries, size: int, workers: int) -> float:
    """Decode + resize only, all cores, nothing written or sent back."""
    rels = [rel for rel, _ in entries]
    chunks = [rels[i:i + 8] for i in range(0, len(rels), 8)]
    started = time.perf_counter()
    with worker_pool(workers, _init, (root, size)) as pool:  # same one-thread OpenCV workers as ours
        done = sum(pool.map(_decode_resize, chunks))
    assert done == len(rels)
    return time.perf_counter() - started


def write_only(db: Path, count: int, size: int) -> tuple[float, float]:
    """(c): `count` raw size x size Datums through LmdbWriter as the converter commits and flushes them.

    Returns (wall seconds, CPU seconds of this process); one Datum's bytes
    serve for every record (the copy into the map is the cost, not making it).
    """
    from datakit.db.lmdb_backend import LmdbWriter
    value = encode_datum(np.zeros((3, size, size), np.uint8), 1)
    per_commit = max(1, (8 << 20) // len(value))
    per_flush = max(1, (64 << 20) // len(value))
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    writer = LmdbWriter(db, drop_written=True)  # as datakit convert opens it
    for start in range(0, count, per_commit):
        writer.write([(f"{i:08d}_img/{i:05d}.jpg".encode(), value) for i in range(start, min(count, start + per_commit))])
        if (start // per_commit + 1) % (per_flush // per_commit or 1) == 0:
            writer.sync()
    writer.close()
    wall = time.perf_counter() - started
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def ours(root: Path, list_file: Path, db: Path, size: int, workers: int) -> float:
    started = time.perf_counter()
    summary = convert(root, list_file, db, ConvertOptions(resize_height=size, resize_width=size, workers=workers,
                                                          progress=False))
    assert summary.written == sum(1 for _ in open(list_file)), summary.line()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench_convert")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0, help="0 = all cores")
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs of each way")
    args = ap.parse_args(argv)
    workers = args.workers or default_workers()
    tmp = Path(tempfile.mkdtemp(prefix="bench_convert_"))
    try:
        t = time.perf_counter()
        entries = make_jpegs(tmp, args.images)
        list_file = tmp / "list.txt"
        list_file.write_text("".join(f"{rel} {label}\n" for rel, label in entries))
        nbytes = sum((tmp / rel).stat().st_size for rel, _ in entries)
        for rel, _ in entries:  # warm the page cache for every way alike
            (tmp / rel).read_bytes()
        print(f"{args.images} JPEGs, {nbytes / 1e6:.1f} MB, made in {time.perf_counter() - t:.1f} s; "
              f"{workers} workers, {os.cpu_count()} CPUs")
        best = {"loop": float("inf"), "ceiling": float("inf"), "ours": float("inf")}
        for r in range(args.repeat):
            for name in best:
                db = tmp / f"db_{name}_{r}"
                before = machine_cpu()
                if name == "loop":
                    dt = loop_baseline(tmp, entries, db, args.size)
                elif name == "ceiling":
                    dt = ceiling(tmp, entries, args.size, workers)
                else:
                    dt = ours(tmp, list_file, db, args.size, workers)
                shutil.rmtree(db, ignore_errors=True)
                best[name] = min(best[name], dt)
                used = {k: v - before[k] for k, v in machine_cpu().items()}
                print(f"  run {r + 1}: {name:8s} {dt:6.2f} s  {args.images / dt:7.1f} images/s   machine CPU: "
                      f"busy {used['busy']:.2f} s, idle {used['idle']:.2f} s, steal {used['steal']:.2f} s", flush=True)
        write_cpu = float("inf")
        for r in range(args.repeat):
            db = tmp / f"db_write_{r}"
            wall, cpu = write_only(db, args.images, args.size)
            shutil.rmtree(db, ignore_errors=True)
            write_cpu = min(write_cpu, cpu)
            print(f"  run {r + 1}: write only (c) {wall:6.2f} s, CPU {cpu / args.images * 1e3:.3f} ms per record",
                  flush=True)
        rate = {k: args.images / v for k, v in best.items()}
        print(f"loop (a, convert_imageset's way): {rate['loop']:.1f} images/s")
        print(f"ceiling (b, decode+resize only, {workers} procs): {rate['ceiling']:.1f} images/s")
        print(f"datakit convert: {rate['ours']:.1f} images/s")
        ceiling_cpu = workers / rate["ceiling"]  # CPU seconds per image the ceiling spends on all cores
        bound = workers / (ceiling_cpu + write_cpu / args.images)
        print(f"writing alone (c): {write_cpu / args.images * 1e3:.3f} ms CPU per record; a converter that writes "
              f"is bound by {workers} cores / ({ceiling_cpu * 1e3:.3f} + {write_cpu / args.images * 1e3:.3f} ms) "
              f"= {bound:.0f} images/s = {bound / rate['ceiling']:.2f} of the ceiling (ours: "
              f"{rate['ours'] / bound:.2f} of that bound)")
        print(f"RATIO convert_vs_loop: {rate['ours'] / rate['loop']:.2f} (target 1.8)")
        print(f"RATIO convert_vs_ceiling: {rate['ours'] / rate['ceiling']:.2f} (target 0.85)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
