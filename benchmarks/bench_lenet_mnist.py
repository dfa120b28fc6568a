"""LeNet from scratch on the real MNIST with Caffe's LeNet solver; Caffe's example reaches ~99.1%.

The whole user path: MNIST idx -> PNG + image lists (datakit.idx.export_images) -> `datakit convert
--gray` to LMDB -> `trainer fit --solver models/lenet/lenet_solver.prototxt` (base_lr 0.01, momentum
0.9, weight_decay 0.0005, inv policy gamma 1e-4 power 0.75, batch 64, 10,000 iterations). Prints the
final test accuracy on the 10,000 test images and the wall time; the ratio is accuracy / 0.990 (the
issue's bar). `--iterations` shortens the run on a slow machine; the figure then says so.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.990


def shared_mnist() -> Path:
    base = Path(os.environ.get("DATAKIT_SHARED", ROOT.parent / "shared")) / "data" / "mnist"
    if not (base / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"MNIST not found in {base} (set DATAKIT_SHARED to the shared/ folder)")
    return base


def prepare(work: Path) -> float:
    """Export and convert both splits unless already there; returns the seconds it took."""
    from datakit.convert import ConvertOptions, convert
    from datakit.idx import export_images, read_mnist
    started = time.perf_counter()
    mnist = shared_mnist()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        db = work / f"mnist_{split}_lmdb"
        if db.is_dir():
            continue
        images, labels = read_mnist(mnist / f"{prefix}-images-idx3-ubyte.gz", mnist / f"{prefix}-labels-idx1-ubyte.gz")
        export_images(images, labels, work / "png", work / f"{split}.txt", subdir=split)
        convert(work / "png", work / f"{split}.txt", db, ConvertOptions(gray=True, progress=False))
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench_lenet_mnist")
    ap.add_argument("--iterations", type=int, default=10000, help="training iterations (Caffe's: 10000)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--workdir", help="keep the converted LMDBs and logs here (default: a temporary folder)")
    args = ap.parse_args(argv)
    from trainer.fit import FitOptions, fit
    tmp = None if args.workdir else tempfile.TemporaryDirectory()
    work = Path(args.workdir or tmp.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    prep = prepare(work)
    here = Path.cwd()
    os.chdir(work)
    try:
        started = time.perf_counter()
        result = fit(FitOptions(solver=str(ROOT / "models/lenet/lenet_solver.prototxt"), device=args.device,
                                max_iter=args.iterations, log=str(work / "lenet.log"),
                                stream=io.StringIO(), handle_signals=False))
        train_s = time.perf_counter() - started
    finally:
        os.chdir(here)
        if tmp is not None:
            tmp.cleanup()
    acc = result.test_scores[0]["accuracy"]
    print(f"prepare (export PNG + datakit convert, both splits): {prep:.1f} s")
    print(f"trainer fit, {args.iterations} iterations ({args.device}): {train_s:.1f} s, "
          f"{args.iterations / train_s:.1f} iter/s")
    print(f"test accuracy after {args.iterations} iterations: {acc:.4f} (Caffe's example: ~0.991)"
          + ("" if args.iterations == 10000 else " [shortened run]"))
    print(f"RATIO lenet_mnist: {acc / TARGET:.4f} (target 1.0)")


if __name__ == "__main__":
    main(sys.argv[1:])
