"""Assemble throughput: datakit's async downloader vs a Caffe-like process pool, 50 ms per response.

Both download the same 2000 images from the same local mirror (a separate
process serving pre-generated JPEGs from a folder, every response delayed by
50 ms, standing in for a distant image host). The images are what Flickr
serves for the manifest's URLs (its "medium" size): longest side 500 px, about
100 KB, made from the real photos in shared/data/photos (random crops, flips,
brightness, sensor-like noise, quality 95); `--thumbnails` serves the mirror's
small synthetic JPEGs (~5 KB) instead, as earlier runs did.

Baseline: what Caffe's examples/finetune_flickr_style/assemble_data.py does,
a multiprocessing pool with one worker per core, each doing a blocking
urllib download, the placeholder sha1 check and a full decode. Its ceiling is
cores / latency (40 images/s on 2 cores).

Ours: `datakit.assemble` with its default options. Its ceiling is
min(concurrency, per-host limit) / latency; the benchmark reports the
fraction of that reached and, from CPU time, whether the CPU became the limit.

Also printed: the CPU cost of validating one image, datakit's check (a
reduced-size decode, see datakit.images.verify_image) against the full decode
the baseline does, over the same images in this process.

    python -m benchmarks.bench_assemble [--images 2000] [--latency-ms 50] [--thumbnails]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import cv2
from benchmarks.photos import flickr_medium_jpegs

from datakit.assemble import AssembleConfig, assemble, finish, plan, run_partitions  # noqa: F401 - loaded before any clock
from datakit.download import FLICKR_PLACEHOLDER_SHA1, DownloadOptions, check_image
from datakit.images import decode_image
from datakit.manifest import open_manifest, select_rows
from datakit.mirror import synthetic_image
from scripts.mirror_process import mirror_subprocess


def _caffe_like_download(args: tuple[str, str]) -> bool:
    """assemble_data.py's download_image: urlretrieve, placeholder check, decode; False on any failure."""
    url, filename = args
    try:
        if not os.path.exists(filename):
            urllib.request.urlretrieve(url, filename)
        with open(filename, "rb") as fh:
            assert hashlib.sha1(fh.read()).hexdigest() != FLICKR_PLACEHOLDER_SHA1
        assert cv2.imread(filename) is not None
        return True
    except Exception:
        return False


def validation_cost(images: list[bytes], opts: DownloadOptions) -> tuple[float, float]:
    """CPU ms per image: datakit's check_image, and the baseline's full decode, over the same bytes."""
    def per_image(fn) -> float:
        best = float("inf")
        for _ in range(2):
            t = time.process_time()
            for data in images:
                fn(data)
            best = min(best, time.process_time() - t)
        return 1000 * best / len(images)
    ours = per_image(lambda d: check_image(d, opts))
    full = per_image(lambda d: decode_image(d, color=True))
    return ours, full


def _cpu_seconds() -> float:
    self_ = resource.getrusage(resource.RUSAGE_SELF)
    return self_.ru_utime + self_.ru_stime


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--seed", type=int, default=1701)
    ap.add_argument("--thumbnails", action="store_true", help="serve ~5 KB synthetic JPEGs (the old workload)")
    args = ap.parse_args(argv if argv is not None else [])
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench-assemble-"))
    try:
        _, rows, _ = open_manifest("demo")
        picked = select_rows(rows, images=args.images, seed=args.seed)
        served = work / "served"
        served.mkdir()
        photos = [] if args.thumbnails else flickr_medium_jpegs(len(picked), args.seed)
        for i, r in enumerate(picked):  # the mirror serves these files, so its CPU cost is the same for both runs
            path = urlsplit(r.url).path
            data = synthetic_image(path, r.label, 0) if args.thumbnails else photos[i]
            (served / path.rsplit("/", 1)[-1]).write_bytes(data)
        sizes = [p.stat().st_size for p in served.iterdir()]
        mb = sum(sizes) / 1e6
        print(f"{len(picked)} images ({mb:.1f} MB, mean {mb * 1000 / len(sizes):.0f} KB"
              f"{', thumbnails' if args.thumbnails else ', longest side 500 px'}) from a local mirror, "
              f"{args.latency_ms:g} ms per response, {cores} cores")
        sample = [p.read_bytes() for p in sorted(served.iterdir())[:200]]
        ours_ms, full_ms = validation_cost(sample, DownloadOptions())
        print(f"validation CPU per image ({len(sample)} images, this process): datakit check_image {ours_ms:.2f} ms, "
              f"full decode (the baseline's) {full_ms:.2f} ms")
        print(f"RATIO validate_vs_full_decode: {full_ms / ours_ms:.2f} (> 1: cheaper than a full decode)")
        with mirror_subprocess(["--manifest", "demo", "--directory", str(served),
                                "--latency", str(args.latency_ms)]) as url:
            # ours
            opts = DownloadOptions()
            out = work / "ours"
            cpu0, t0 = _cpu_seconds(), time.perf_counter()
            result = assemble(AssembleConfig(manifest="demo", out=out, images=args.images, seed=args.seed,
                                             mirror=url, progress=False, options=opts), log=lambda s: None)
            ours_s = time.perf_counter() - t0
            ours_cpu = _cpu_seconds() - cpu0
            assert result.succeeded == len(picked), result.report
            ours_rate = result.succeeded / ours_s

            # ours again with a higher ceiling, to find where the CPU takes over (not part of the ratio)
            wide = DownloadOptions(concurrency=256, per_host=0)
            cpu0, t0 = _cpu_seconds(), time.perf_counter()
            wide_result = assemble(AssembleConfig(manifest="demo", out=work / "wide", images=args.images,
                                                  seed=args.seed, mirror=url, progress=False, options=wide),
                                   log=lambda s: None)
            wide_s = time.perf_counter() - t0
            wide_cpu = _cpu_seconds() - cpu0
            wide_rate = wide_result.succeeded / wide_s

            # baseline: a pool of blocking urllib downloads, one worker per core
            base_dir = work / "caffe" / "images"
            base_dir.mkdir(parents=True)
            jobs = [(url + urlsplit(r.url).path, str(base_dir / r.url.rsplit("/", 1)[-1])) for r in picked]
            t0 = time.perf_counter()
            with multiprocessing.get_context("fork").Pool(processes=cores) as pool:
                ok = pool.map(_caffe_like_download, jobs)
            base_s = time.perf_counter() - t0
            assert all(ok), f"{ok.count(False)} baseline downloads failed"
            base_rate = len(jobs) / base_s

        latency = args.latency_ms / 1000.0
        in_flight = min(opts.concurrency, opts.per_host or opts.concurrency)
        ceiling = in_flight / latency
        base_ceiling = cores / latency
        cpu_share = ours_cpu / ours_s
        print(f"baseline (Caffe-like pool, {cores} workers): {base_rate:8.1f} images/s  ({base_s:.1f} s; "
              f"{base_rate / base_ceiling:.0%} of its ceiling {base_ceiling:.0f}/s)")
        print(f"datakit assemble ({opts.concurrency} connections, {opts.per_host} per host): {ours_rate:8.1f} images/s  "
              f"({ours_s:.2f} s; {ours_rate / ceiling:.0%} of the ceiling {in_flight}/{latency:g} s = {ceiling:.0f}/s)")
        limit = (f"CPU (this process used {cpu_share:.0%} of one core; the mirror shares the same {cores} cores)"
                 if ours_rate < 0.7 * ceiling else "latency x concurrency (the network ceiling)")
        print(f"limit reached: {limit}")
        wide_ceiling = wide.concurrency / latency
        print(f"  (same with 256 connections, no per-host limit: {wide_rate:.1f} images/s, "
              f"{wide_rate / wide_ceiling:.0%} of {wide_ceiling:.0f}/s; this process used {wide_cpu / wide_s:.0%} "
              f"of one core, so past ~{wide_rate:.0f}/s the CPU - HTTP parsing, decoding, the mirror - is the limit)")
        print(f"RATIO assemble: {ours_rate / base_rate:.1f} (target 10)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(None)
