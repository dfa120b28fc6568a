"""PyTorch input pipeline: DataLoader over a `datakit convert` LMDB vs torchvision's ImageFolder.

Both read the same photos (about 500 px on the long side, about 100 KB JPEGs, made from the
real photos in ../shared/data/photos by random crops, flips and brightness changes), with the
same DataLoader (batch, workers, shuffled) and the same random crop 227 + horizontal flip +
mean / scale, as CaffeNet trains:

* ours: ``datakit convert --resize-height 256 --resize-width 256`` once (raw Datums, Caffe's
  ImageNet recipe), then ``datakit.torch.CaffeDataset`` with ``crop_size: 227 mirror: true``;
  also the encoded LMDB (``--encoded``: 256x256 JPEGs in the records) to show the decode cost;
* baseline: ``torchvision.datasets.ImageFolder`` over the JPEG files with
  ``Resize((256, 256)), RandomCrop(227), RandomHorizontalFlip(), ToTensor(), Normalize``.

Prints images/s for each and ``RATIO torch_loader`` (ours / ImageFolder; target >= 2), then a
per-image breakdown measured in one process (where the time goes). Needs torch and
torchvision: ``make bench-torch`` makes their own environment (``.venv-tv``, extra
``bench-torchvision``: torch 2.14.1 + torchvision 0.29.1; the ``bench`` extra's CPU torch 2.13.0
has no torchvision that imports beside it); under ``make bench`` it says so and skips.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

MEAN_BGR = (104.0, 117.0, 123.0)
SCALE = 1 / 58.0
CLASSES = 5


def make_photos(root: Path, n: int, seed: int = 0) -> list[tuple[str, int]]:
    """n distinct Flickr-sized JPEGs (benchmarks/photos.py) in ImageFolder's class folders."""
    from benchmarks.photos import flickr_medium_jpegs
    entries = []
    for i, data in enumerate(flickr_medium_jpegs(n, seed)):
        label = i % CLASSES
        rel = f"class{label}/img{i:05d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        entries.append((rel, label))
    return entries


class Constant:
    """A dataset of one ready float32 3x227x227 tensor: what the DataLoader's transport alone costs."""

    def __init__(self, n: int) -> None:
        import torch
        self.n = n
        self.x = torch.zeros(3, 227, 227)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.x, 0


def loader_rate(dataset, batch: int, workers: int, epochs: int = 1) -> float:
    """Images/s of a shuffled DataLoader over `dataset` (one warm-up epoch first, not timed)."""
    import torch
    from torch.utils.data import DataLoader
    dl = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0,
                    generator=torch.Generator().manual_seed(0))
    for _ in dl:
        pass
    n = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, _y in dl:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def torchvision_dataset(root: Path):
    from torchvision import datasets, transforms
    rgb_mean = [m / 255 for m in MEAN_BGR[::-1]]
    tf = transforms.Compose([transforms.Resize((256, 256)), transforms.RandomCrop(227),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(rgb_mean, [1 / (255 * SCALE)] * 3)])
    return datasets.ImageFolder(str(root), transform=tf)


def breakdown(root: Path, entries: list[tuple[str, int]], db: Path, enc_db: Path, k: int = 200) -> list[str]:
    """Per-image costs in this process, each stage timed on its own over k images (one torch thread,
    as in a DataLoader worker)."""
    import torch

    from datakit.torch import CaffeDataset
    torch.set_num_threads(1)
    lines = []

    def per_image(fn, items) -> float:
        t0 = time.perf_counter()
        for it in items:
            fn(it)
        return (time.perf_counter() - t0) / len(items) * 1e3

    tf = {"crop_size": 227, "mirror": True, "mean_value": list(MEAN_BGR), "scale": SCALE}
    raw = CaffeDataset(db, transform=tf, batch_size=64)
    plain = CaffeDataset(db, batch_size=64)
    enc_plain = CaffeDataset(enc_db, batch_size=64)
    idx = list(range(min(k, len(raw))))
    read = per_image(lambda i: plain.records.decode(*next(plain.records.reader().raw_items(start=plain._keys[i]))), idx)
    full = per_image(lambda i: raw[i], idx)
    enc = per_image(lambda i: enc_plain[i], idx)
    lines.append(f"  ours, raw LMDB: read + parse Datum {read:.2f} ms, + crop/flip/mean/scale {full - read:.2f} ms "
                 f"= {full:.2f} ms per image (the 500 px decode and resize were paid once, by datakit convert)")
    lines.append(f"  ours, encoded LMDB: read + decode the 256x256 JPEG (OpenCV) {enc:.2f} ms per image")
    try:
        from PIL import Image
        from torchvision import transforms
    except ImportError:
        return lines
    paths = [root / rel for rel, _ in entries[:k]]
    decode = per_image(lambda p: Image.open(p).convert("RGB"), paths)
    imgs = [Image.open(p).convert("RGB") for p in paths]
    resize = per_image(transforms.Resize((256, 256)), imgs)
    small = [transforms.Resize((256, 256))(im) for im in imgs]
    rest = transforms.Compose([transforms.RandomCrop(227), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                               transforms.Normalize([0.48, 0.46, 0.41], [0.23] * 3)])
    tail = per_image(rest, small)
    lines.append(f"  ImageFolder: open + decode the ~500 px JPEG (PIL) {decode:.2f} ms, resize to 256x256 {resize:.2f} ms, "
                 f"crop/flip/ToTensor/Normalize {tail:.2f} ms = {decode + resize + tail:.2f} ms per image")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs (after one untimed warm-up epoch)")
    args = ap.parse_args(argv)
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        print("SKIP torch_loader: needs torch and torchvision beside each other; run `make bench-torch` "
              "(its own environment with torch 2.14.1 + torchvision 0.29.1)")
        return
    import datakit
    from datakit.torch import CaffeDataset
    with tempfile.TemporaryDirectory(prefix="bench-torch-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        entries = make_photos(tmp / "photos", args.images)
        sizes = [(tmp / "photos" / rel).stat().st_size for rel, _ in entries]
        print(f"{len(entries)} photos, mean {np.mean(sizes) / 1e3:.0f} KB, made in {time.perf_counter() - t0:.1f} s")
        (tmp / "list.txt").write_text("".join(f"{rel} {label}\n" for rel, label in entries))
        s = datakit.convert(tmp / "photos", tmp / "list.txt", tmp / "lmdb", resize_height=256, resize_width=256,
                            shuffle=True, seed=0, progress=False)
        print(f"datakit convert (raw, 256x256): {s.written} records in {s.seconds:.1f} s "
              f"({s.written / s.seconds:.0f} images/s, once)")
        e = datakit.convert(tmp / "photos", tmp / "list.txt", tmp / "lmdb_enc", resize_height=256, resize_width=256,
                            shuffle=True, seed=0, encoded=True, encode_type="jpg", progress=False)
        print(f"datakit convert (encoded JPEG, 256x256): {e.written} records in {e.seconds:.1f} s")
        tf = {"crop_size": 227, "mirror": True, "mean_value": list(MEAN_BGR), "scale": SCALE}
        print(f"DataLoader: batch {args.batch}, {args.workers} workers, shuffled, random crop 227 + flip + mean/scale")
        ours = loader_rate(CaffeDataset(tmp / "lmdb", transform=tf, batch_size=args.batch), args.batch, args.workers,
                           args.epochs)
        print(f"  datakit.torch.CaffeDataset, raw LMDB:     {ours:7.0f} images/s")
        enc = loader_rate(CaffeDataset(tmp / "lmdb_enc", transform=tf, batch_size=args.batch), args.batch,
                          args.workers, args.epochs)
        print(f"  datakit.torch.CaffeDataset, encoded LMDB: {enc:7.0f} images/s")
        base = loader_rate(torchvision_dataset(tmp / "photos"), args.batch, args.workers, args.epochs)
        print(f"  torchvision ImageFolder over the JPEGs:  {base:7.0f} images/s")
        transport = loader_rate(Constant(len(entries)), args.batch, args.workers, args.epochs)
        print(f"  (a dataset of one ready tensor, i.e. the DataLoader's collate + transport alone: {transport:.0f} images/s)")
        print("where the time goes (one process, per image):")
        for line in breakdown(tmp / "photos", entries, tmp / "lmdb", tmp / "lmdb_enc"):
            print(line)
        print(f"RATIO torch_loader: {ours / base:.2f} (target 2.0)")
        print(f"RATIO torch_loader_encoded: {enc / base:.2f} (no target: the encoded LMDB still decodes)")


if __name__ == "__main__":
    main()
