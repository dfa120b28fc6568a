"""Caffe's data transforms (``transform_param``) applied to a whole batch at once.

What Caffe's DataTransformer computes, per output pixel::

    out[n, c, h, w'] = (x[n, c, h_off + h, w_off + w] - mean[c, h_off + h, w_off + w]) * scale
    with w' = crop - 1 - w when the image is mirrored, else w

- the mean (``mean_file`` cropped at the image's own offsets, or ``mean_value`` per
  channel) is subtracted first, then ``scale`` multiplies;
- crop offsets: TRAIN draws ``h_off`` in ``[0, H - crop]`` (and ``w_off`` likewise),
  TEST takes ``(H - crop) // 2``;
- mirror: a random flip of each image with probability 1/2.

One deliberate difference: Caffe also flips at random in the TEST phase when
``mirror: true``; we mirror in TRAIN only, so test scores are deterministic and do not
change between two evaluations of the same weights.

Random draws come from a Generator the caller passes (the data layer seeds one per
batch from the run seed and the batch number) so that a resumed run draws exactly
what the uninterrupted run drew. Draws are made on the host; the arithmetic runs on
``xp`` (NumPy, or CuPy where one gather kernel crops, flips and subtracts the whole batch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from datakit.errors import ConfigError
from datakit.formats import caffe_pb2

from datakit.threadpool import decode_pool

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


@dataclass(frozen=True)
class Plan:
    """Per-image crop offsets and mirror flags of one batch (host arrays)."""

    h_off: np.ndarray
    w_off: np.ndarray
    mirror: np.ndarray


class Transformer:
    """``transform_param`` of one layer, checked against the input shape at setup."""

    def __init__(self, param: caffe_pb2.TransformationParameter | None, phase: int, *,
                 base_dir: str | os.PathLike = ".", where: str = "transform_param") -> None:
        param = param if param is not None else caffe_pb2.TransformationParameter()
        self.where = where
        self.phase = phase
        self.scale = float(param.scale) if param.HasField("scale") else 1.0
        self.mirror = bool(param.mirror)
        self.crop = int(param.crop_size)
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        if self.force_color and self.force_gray:
            raise ConfigError(f"{where}: force_color and force_gray cannot both be set")
        self.mean_values = [float(v) for v in param.mean_value]
        self.mean_file: Path | None = None
        self.mean: np.ndarray | None = None
        if param.mean_file:
            if self.mean_values:
                raise ConfigError(f"{where}: give mean_file or mean_value, not both (as Caffe)")
            self.mean_file = Path(base_dir) / param.mean_file
            from datakit.formats.blobproto import read_mean
            self.mean = np.ascontiguousarray(read_mean(self.mean_file), dtype=np.float32)
        self._dev_cache: dict[int, Any] = {}
        #: threads for the NumPy path (1 keeps everything in the calling thread)
        self.threads = max(1, min(4, os.cpu_count() or 1))
        self.in_shape: tuple[int, int, int] | None = None
        self._mean_lr: np.ndarray | None = None   # the mean flipped left-right, made on first use

    # -- setup ----------------------------------------------------------------------------
    @property
    def is_identity(self) -> bool:
        return (self.scale == 1.0 and not self.mirror and not self.crop and self.mean is None
                and not self.mean_values)

    def output_shape(self, c: int, h: int, w: int) -> tuple[int, int, int]:
        """Check the transform fits a C×H×W input and give the output shape (errors at setup)."""
        if self.crop:
            if self.crop > h or self.crop > w:
                raise ConfigError(f"{self.where}: crop_size {self.crop} is larger than the "
                                  f"{h}x{w} images; lower crop_size or convert with a larger --resize")
        if self.mean is not None and self.mean.shape != (c, h, w):
            mc, mh, mw = self.mean.shape
            raise ConfigError(f"{self.where}: mean_file {self.mean_file} is {mc}x{mh}x{mw} (CxHxW) but the "
                              f"images are {c}x{h}x{w}; compute the mean from this database "
                              f"(datakit mean) or use mean_value")
        if self.mean_values and len(self.mean_values) not in (1, c):
            raise ConfigError(f"{self.where}: {len(self.mean_values)} mean_value entries for {c}-channel "
                              f"images; give " + ("1" if c == 1 else f"1 or {c}"))
        self.in_shape = (c, h, w)
        return (c, self.crop, self.crop) if self.crop else (c, h, w)

    # -- randomness -----------------------------------------------------------------------
    def plan(self, n: int, h: int, w: int, rng: np.random.Generator | None) -> Plan:
        """Crop offsets and mirror flags for ``n`` images of H×W."""
        if self.crop and self.phase == TRAIN:
            if rng is None:
                raise ValueError("a random crop needs a Generator")
            h_off = rng.integers(0, h - self.crop + 1, size=n)
            w_off = rng.integers(0, w - self.crop + 1, size=n)
        elif self.crop:
            h_off = np.full(n, (h - self.crop) // 2)
            w_off = np.full(n, (w - self.crop) // 2)
        else:
            h_off = w_off = np.zeros(n, dtype=np.int64)
        if self.mirror and self.phase == TRAIN:
            if rng is None:
                raise ValueError("a random mirror needs a Generator")
            mirror = rng.integers(0, 2, size=n).astype(bool)
        else:
            mirror = np.zeros(n, dtype=bool)
        return Plan(h_off.astype(np.int64), w_off.astype(np.int64), mirror)

    # -- arithmetic -----------------------------------------------------------------------
    def _mean_on(self, xp: ModuleType) -> Any:
        key = id(xp)
        if key not in self._dev_cache:
            if self.mean is not None:
                self._dev_cache[key] = xp.asarray(self.mean)
            elif self.mean_values:
                c = self.in_shape[0] if self.in_shape else len(self.mean_values)
                vals = self.mean_values * c if len(self.mean_values) == 1 else self.mean_values
                self._dev_cache[key] = xp.asarray(np.array(vals, np.float32).reshape(-1, 1, 1))
            else:
                self._dev_cache[key] = None
        return self._dev_cache[key]

    def apply(self, batch: Any, plan: Plan, xp: ModuleType = np, out: Any = None) -> Any:
        """Transform an N×C×H×W batch (uint8 or float, on ``xp``) into float32 N×C×h×w."""
        n, c, h, w = batch.shape
        oc, oh, ow = self.output_shape(c, h, w)
        if out is None:
            out = xp.empty((n, oc, oh, ow), dtype=np.float32)
        if xp is np:
            self._apply_host(batch, plan, out)
        else:
            self._apply_gather(batch, plan, out, xp)
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out

    def _apply_host(self, batch: np.ndarray, plan: Plan, out: np.ndarray) -> None:
        """NumPy: one slice per image (views; the uint8→float cast fuses with the subtraction).

        Large batches are split over the decode pool's threads: NumPy releases the GIL
        inside each per-image operation, so the chunks run on separate cores. A batch under
        ``_SPLIT_ELEMENTS`` output values stays in the calling thread: for LeNet's 64 MNIST
        digits the hand-off to the pool cost more than the work.
        """
        n = batch.shape[0]
        chunks = min(self.threads, max(1, n // 8), max(1, out.size // _SPLIT_ELEMENTS))
        if chunks <= 1:
            self._apply_host_range(batch, plan, out, 0, n)
            return
        bounds = np.linspace(0, n, chunks + 1).astype(int)
        futures = [decode_pool().submit(self._apply_host_range, batch, plan, out, int(a), int(b))
                   for a, b in zip(bounds[:-1], bounds[1:])]
        for f in futures:
            f.result()

    def _apply_host_range(self, batch: np.ndarray, plan: Plan, out: np.ndarray, lo: int, hi: int) -> None:
        """Images lo..hi-1. A mirrored image is flipped by OpenCV into a small buffer first and
        meets a pre-flipped mean: NumPy is much slower on negative strides than on positive ones
        (figures: benchmarks/RESULTS.md, data_layer)."""
        import cv2
        mean = self._mean_on(np)
        c, oh, ow = out.shape[1], out.shape[2], out.shape[3]
        width = batch.shape[3]
        if oh == batch.shape[2] and ow == width and not plan.mirror[lo:hi].any():
            # No crop and no flip: the whole range in one operation, the same value for every pixel
            # as the loop below (an elementwise cast and subtraction do not depend on the grouping).
            if mean is None:
                out[lo:hi] = batch[lo:hi]
            else:
                np.subtract(batch[lo:hi], mean, out=out[lo:hi], dtype=np.float32)
            return
        per_image_mean = mean is not None and mean.shape[1] > 1
        flipped_mean = self._flipped_mean() if per_image_mean else None
        tmp = np.empty((c, oh, ow), dtype=batch.dtype) if plan.mirror[lo:hi].any() else None
        for i in range(lo, hi):
            h0, w0 = int(plan.h_off[i]), int(plan.w_off[i])
            hs = slice(h0, h0 + oh)
            src = batch[i, :, hs, w0:w0 + ow]
            if plan.mirror[i]:
                assert tmp is not None  # made above whenever lo..hi holds a mirrored image
                for ch in range(c):
                    cv2.flip(src[ch], 1, dst=tmp[ch])
                src = tmp
                # columns w0..w0+ow-1 read right to left = the flipped mean's columns W-w0-ow..W-w0-1
                m = flipped_mean[:, hs, width - w0 - ow:width - w0] if flipped_mean is not None else mean
            else:
                m = mean[:, hs, w0:w0 + ow] if per_image_mean and mean is not None else mean
            if m is None:
                out[i] = src
            else:
                np.subtract(src, m, out=out[i], dtype=np.float32)

    def _flipped_mean(self) -> np.ndarray:
        if self._mean_lr is None:
            assert self.mean is not None  # called only for a per-image mean
            self._mean_lr = np.ascontiguousarray(self.mean[:, :, ::-1])
        return self._mean_lr

    def _apply_gather(self, batch: Any, plan: Plan, out: Any, xp: ModuleType) -> None:
        """Any xp (CuPy's path): one advanced-indexing gather crops and flips every image."""
        rows, cols = gather_indices(plan, out.shape[2], out.shape[3], xp)
        n_idx = xp.arange(batch.shape[0])[:, None, None, None]
        c_idx = xp.arange(batch.shape[1])[None, :, None, None]
        r = rows[:, None, :, None]
        q = cols[:, None, None, :]
        out[...] = batch[n_idx, c_idx, r, q]
        mean = self._mean_on(xp)
        if mean is not None and mean.shape[1] > 1:
            out -= mean[c_idx[0], r, q]
        elif mean is not None:
            out -= mean


#: output values below which a batch is transformed in the calling thread (not split over the pool)
_SPLIT_ELEMENTS = 1 << 18


def gather_indices(plan: Plan, oh: int, ow: int, xp: ModuleType = np) -> tuple[Any, Any]:
    """Source row and column of every output pixel: (N×oh, N×ow), flips folded into the columns."""
    ar_h = np.arange(oh)
    ar_w = np.arange(ow)
    rows = plan.h_off[:, None] + ar_h[None, :]
    cols = np.where(plan.mirror[:, None], ow - 1 - ar_w[None, :], ar_w[None, :]) + plan.w_off[:, None]
    return xp.asarray(rows), xp.asarray(cols)


def transformer_for(layer_param: caffe_pb2.LayerParameter, phase: int, base_dir: str | Path = ".") -> Transformer:
    """The Transformer a data layer's ``transform_param`` describes (errors name the layer)."""
    tp = layer_param.transform_param if layer_param.HasField("transform_param") else None
    return Transformer(tp, phase, base_dir=base_dir,
                       where=f"layer {layer_param.name} ({layer_param.type}) transform_param")
