"""Caffe's WindowData (R-CNN fine-tuning): batches of foreground and background windows cut from images.

The window file (``window_data_param.source``) repeats, per image::

    # image_index
    img_path            (joined to root_folder)
    channels
    height
    width
    num_windows
    class_index overlap x1 y1 x2 y2     (num_windows lines, 0-based inclusive pixel boxes)

Windows with overlap >= fg_threshold are foreground (their class, which must be > 0), those
with overlap < bg_threshold background (label 0); the rest are unused. A batch holds
``batch_size - int(batch_size * fg_fraction)`` background windows, then the foreground ones,
each drawn at random. A window is widened by ``context_pad`` (made square first with
``crop_mode: "square"``), clipped to the image, warped to crop_size x crop_size with the
clipped-off part left as zero padding, optionally mirrored, then the mean (transform_param's
mean_file, centred, or mean_value) is subtracted and ``scale`` applied, as Caffe's
WindowDataLayer::load_batch does. crop_size, mirror and the mean come from transform_param
(Caffe's upgrade moves them there); scale from transform_param when set there, else from
window_data_param. ``cache_images`` keeps decoded images in memory. Batch k's draws come from
a generator seeded by (layer seed, k), so a resumed run reads the same windows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from datakit.errors import ConfigError, FormatError, ImageError
from datakit.formats.blobproto import read_mean

from trainer.layers import register
from trainer.layers.base_data import HostBatch, PrefetchingDataLayer


def _round(v: float) -> int:
    """C's round(): halves away from zero."""
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def parse_window_file(path: Path, root: str) -> list[tuple[str, tuple[int, int, int], list[list[float]]]]:
    """[(image path, (channels, height, width), [[class, overlap, x1, y1, x2, y2], ...])]."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as err:
        raise ConfigError(f"cannot read window file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise FormatError(f"{path}: not a UTF-8 text window file ({err.reason} at byte {err.start})") from None
    images: list[tuple[str, tuple[int, int, int], list[list[float]]]] = []
    i = 0

    def take(what: str) -> str:
        nonlocal i
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines):
            raise FormatError(f"{path}:{i}: file ends where {what} was expected")
        i += 1
        return lines[i - 1].strip()

    while True:
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines):
            return images
        head = take("'# image_index'")
        if not head.startswith("#"):
            raise FormatError(f"{path}:{i}: expected '# image_index', got {head!r}")
        try:
            name = take("an image path")
            dims = (int(take("channels")), int(take("height")), int(take("width")))
            n = int(take("num_windows"))
            boxes = []
            for _ in range(n):
                row = [float(v) for v in take("a window line").split()]
                if len(row) != 6:
                    raise ValueError(f"a window line has 6 values (class overlap x1 y1 x2 y2), got {len(row)}")
                boxes.append(row)
        except ValueError as err:
            raise FormatError(f"{path}:{i}: {err}") from None
        images.append((str(Path(root) / name) if root else name, dims, boxes))


@register("WindowData")
class WindowDataLayer(PrefetchingDataLayer):
    """Tops: data (batch_size, channels, crop_size, crop_size) and label (batch_size)."""

    transforms = False

    def open_source(self) -> tuple[tuple[int, ...], int]:
        p = self.param.window_data_param
        tp = self.param.transform_param
        self.batch_size = int(p.batch_size)
        # transform_param's, or window_data_param's old fields in a net read without the upgrade
        self.crop = int(tp.crop_size or p.crop_size)
        if self.crop <= 0:
            raise self.error("transform_param.crop_size must be positive (the window is warped to it)")
        self.mirror = bool(tp.mirror or p.mirror)
        self.scale = float(tp.scale if tp.HasField("scale") else p.scale)
        self.context_pad, self.square = int(p.context_pad), p.crop_mode == "square"
        if p.crop_mode not in ("warp", "square"):
            raise self.error(f"crop_mode must be 'warp' or 'square', got {p.crop_mode!r}")
        self.fg_fraction = float(p.fg_fraction)
        path = Path(self.base_dir) / p.source
        self.images = parse_window_file(path, p.root_folder)
        self.fg: list[tuple[int, list[float]]] = []
        self.bg: list[tuple[int, list[float]]] = []
        for k, (_, _, boxes) in enumerate(self.images):
            for box in boxes:
                if box[1] >= p.fg_threshold:
                    if int(box[0]) <= 0:
                        raise FormatError(f"{path}: image {k}: a foreground window has class {int(box[0])}; "
                                          "foreground classes start at 1 (0 is background)")
                    self.fg.append((k, box))
                elif box[1] < p.bg_threshold:
                    self.bg.append((k, [0.0, 0.0, *box[2:]]))
        n_fg = int(self.batch_size * self.fg_fraction)
        if (n_fg and not self.fg) or (self.batch_size - n_fg and not self.bg):
            raise ConfigError(f"{path}: {len(self.fg)} foreground and {len(self.bg)} background windows; "
                              f"a batch needs {n_fg} and {self.batch_size - n_fg}")
        self.channels = self.images[0][1][0] if self.images else 3
        self.cache: dict[int, np.ndarray] | None = {} if p.cache_images else None
        self.mean = self._mean()
        return (self.channels, self.crop, self.crop), len(self.fg) + len(self.bg)

    def _mean(self) -> np.ndarray | None:
        tp = self.param.transform_param
        mean_file = tp.mean_file or self.param.window_data_param.mean_file
        if mean_file and tp.mean_value:
            raise self.error("give mean_file or mean_value, not both")
        if mean_file:
            mean = read_mean(Path(self.base_dir) / mean_file)
            if mean.shape[1] < self.crop or mean.shape[2] < self.crop:
                raise self.error(f"mean_file is {mean.shape[1]}x{mean.shape[2]}, smaller than crop_size {self.crop}")
            off_h, off_w = (mean.shape[1] - self.crop) // 2, (mean.shape[2] - self.crop) // 2
            return mean[:, off_h:off_h + self.crop, off_w:off_w + self.crop]
        if tp.mean_value:
            values = [float(v) for v in tp.mean_value]
            if len(values) not in (1, self.channels):
                raise self.error(f"{len(values)} mean_value for {self.channels} channels")
            return np.array(values * (self.channels // len(values)), np.float32).reshape(-1, 1, 1) \
                * np.ones((1, self.crop, self.crop), np.float32)
        return None

    def read_batch(self, k: int) -> HostBatch:
        rng = np.random.default_rng([self.seed, 4, k])
        n_fg = int(self.batch_size * self.fg_fraction)
        data = np.zeros((self.batch_size, self.channels, self.crop, self.crop), np.float32)
        labels = np.zeros(self.batch_size, np.int64)
        keys = []
        picks = [self.bg[int(i)] for i in rng.integers(0, max(len(self.bg), 1), self.batch_size - n_fg)] + \
                [self.fg[int(i)] for i in rng.integers(0, max(len(self.fg), 1), n_fg)]
        for item, (image_index, box) in enumerate(picks):
            path = self.images[image_index][0]
            img = self._image(image_index)
            mirror = self.mirror and bool(rng.integers(0, 2))
            window, pad_h, pad_w = self._cut(img, box, mirror)
            chw = window.transpose(2, 0, 1).astype(np.float32)
            h, w = chw.shape[1:]
            region = (slice(None), slice(pad_h, pad_h + h), slice(pad_w, pad_w + w))
            if self.mean is not None:
                chw = chw - self.mean[region]
            data[item][region] = chw * self.scale
            labels[item] = int(box[0])
            keys.append(f"{path} window {box[2:]}")
        return HostBatch(data, labels, keys)

    def _image(self, index: int) -> np.ndarray:
        import cv2
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        path = self.images[index][0]
        img = cv2.imread(path, cv2.IMREAD_COLOR if self.channels == 3 else cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ImageError(f"layer {self.name}: cannot read image {path} (window file image {index})")
        img = img.reshape(img.shape[0], img.shape[1], -1)
        if self.cache is not None:
            self.cache[index] = img
        return img

    def _cut(self, img: np.ndarray, box: list[float], mirror: bool) -> tuple[np.ndarray, int, int]:
        """The window warped to its place in the crop, and its top/left zero padding."""
        import cv2
        rows, cols = img.shape[:2]
        x1, y1, x2, y2 = (int(v) for v in box[2:])
        size, pad_h, pad_w = (self.crop, self.crop), 0, 0
        if self.context_pad > 0 or self.square:
            context = self.crop / (self.crop - 2.0 * self.context_pad)
            half_h, half_w = (y2 - y1 + 1) / 2.0, (x2 - x1 + 1) / 2.0
            cx, cy = x1 + half_w, y1 + half_h
            if self.square:
                half_h = half_w = max(half_h, half_w)
            x1, x2 = _round(cx - half_w * context), _round(cx + half_w * context)
            y1, y2 = _round(cy - half_h * context), _round(cy + half_h * context)
            full_h, full_w = y2 - y1 + 1, x2 - x1 + 1
            px1, py1 = max(0, -x1), max(0, -y1)
            px2, py2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
            x1, x2, y1, y2 = x1 + px1, x2 - px2, y1 + py1, y2 - py2
            sx, sy = self.crop / full_w, self.crop / full_h
            pad_h = _round(py1 * sy)
            pad_w = _round(px2 * sx) if mirror else _round(px1 * sx)
            size = (min(_round((x2 - x1 + 1) * sx), self.crop - pad_w), min(_round((y2 - y1 + 1) * sy), self.crop - pad_h))
        if not (0 <= x1 <= x2 < cols and 0 <= y1 <= y2 < rows):
            raise FormatError(f"layer {self.name}: window {box[2:]} lies outside its {cols}x{rows} image")
        window = cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (max(size[0], 1), max(size[1], 1)),
                            interpolation=cv2.INTER_LINEAR)
        window = window.reshape(window.shape[0], window.shape[1], -1)
        return (window[:, ::-1] if mirror else window), pad_h, pad_w
