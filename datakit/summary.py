"""What is in a database (`datakit inspect`): count, record shapes, label histogram, a contact sheet of samples.

The first thing to look at before training on a database someone else made
(or on one we just made): a wrong label range, a mix of sizes, gray images in
a color set or a channel swap all show up here in seconds. Encoded records
are sized from their JPEG/PNG headers, not decoded, so even a large database
is summarised at the speed of reading it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datakit.atomic import write_bytes_atomic
from datakit.formats.datum import datum_to_array, parse_datum_fields
from datakit.db import open_reader, read_progress
from datakit.db.base import Reader, Record
from datakit.errors import ConfigError, ImageError
from datakit.images import read_header
from datakit.report import progress_bar

__all__ = ["DbSummary", "inspect_db", "missing_labels", "contact_sheet", "write_contact_sheet"]


@dataclass
class DbSummary:
    path: str
    backend: str
    count: int = 0
    shapes: Counter = field(default_factory=Counter)   # 'CxHxW' (raw/HDF5) or 'jpeg HxW' (encoded)
    labels: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)    # raw / encoded / float
    first_key: str = ""
    last_key: str = ""
    progress: dict | None = None

    def lines(self) -> list[str]:
        out = [f"{self.path}: {self.backend}, {self.count} records "
               f"({', '.join(f'{n} {k}' for k, n in self.kinds.most_common())})"]
        for shape, n in self.shapes.most_common(10):
            out.append(f"  shape {shape}: {n}")
        if len(self.shapes) > 10:
            out.append(f"  ... {len(self.shapes) - 10} more shapes")
        if self.labels:
            lo, hi = min(self.labels), max(self.labels)
            count, first = missing_labels(self.labels)
            note = "" if not count else (f"; missing {first}" if count == len(first)
                                         else f"; missing {count} labels, the first {first}")
            out.append(f"  labels: {len(self.labels)} classes, {lo}..{hi}{note}")
            out.append("  " + "  ".join(f"{k}:{n}" for k, n in sorted(self.labels.items())))
        if self.first_key:
            out.append(f"  keys: {self.first_key} .. {self.last_key}")
        if self.progress:
            s = self.progress.get("summary", {})
            skipped = len(self.progress.get("skipped", []))
            out.append(f"  made by datakit convert ({self.progress.get('status')}): "
                       f"{s.get('written', self.progress.get('written'))} written, {skipped} skipped of "
                       f"{self.progress.get('listed')} listed; options {self.progress.get('options')}")
        return out

    def to_json(self) -> dict:
        return {"path": self.path, "backend": self.backend, "count": self.count,
                "shapes": dict(self.shapes), "labels": {str(k): v for k, v in sorted(self.labels.items())},
                "kinds": dict(self.kinds), "first_key": self.first_key, "last_key": self.last_key}


def missing_labels(present: Iterable[int], first: int = 10) -> tuple[int, list[int]]:
    """How many labels between the smallest and largest of `present` are absent, and the first `first` of them.

    Walks the gaps between the sorted labels present, never the whole range:
    one stray label of 1661992959 in a 10-class database must not make
    `inspect` build a list of 1.6 billion numbers.
    """
    labels = sorted(set(present))
    count = 0
    found: list[int] = []
    for lower, upper in zip(labels, labels[1:]):
        gap = upper - lower - 1
        if gap > 0:
            found.extend(range(lower + 1, min(upper, lower + 1 + first - len(found))))
            count += gap
    return count, found


def inspect_db(path: str | os.PathLike, backend: str | None = None, *, samples: int = 0,
               progress: bool | None = False) -> tuple[DbSummary, list[Record]]:
    """Summarise every record; also return `samples` records spread evenly over the database, decoded.

    `progress`: a bar over the records (None: when stderr is a terminal).
    """
    reader = open_reader(path, backend, decode=True)
    summary = DbSummary(str(path), reader.backend, progress=read_progress(path) if Path(path).is_dir() else None)
    picked: list[Record] = []
    with reader:
        total = len(reader)
        want = {i * total // samples for i in range(samples)} if samples and total else set()
        with progress_bar(total, progress, unit="rec", desc="inspect") as bar:
            if reader.record_kind == "array":
                for i, rec in enumerate(reader):
                    assert rec.image is not None  # array records always carry their rows
                    _count(summary, rec.key, "float", "x".join(map(str, rec.image.shape)), rec.label)
                    if i in want:
                        picked.append(rec)
                    if i % 256 == 255:
                        bar.update(256)
                return summary, picked
            _summarise_datums(reader, summary, want, picked, bar, path)
    return summary, picked


def _summarise_datums(reader: Reader, summary: DbSummary, want: set[int], picked: list[Record], bar: Any,
                      path: str | os.PathLike) -> None:
    """Count every serialized Datum; encoded ones are sized from their headers, not decoded."""
    for i, (key, value) in enumerate(reader.raw_items()):
        skey = key.decode("utf-8", "backslashreplace")
        f = parse_datum_fields(value, f"{path}: record {skey!r}")
        if f.encoded:
            try:
                head = read_header(bytes(f.data[:65536]))
            except Exception:  # noqa: BLE001 - a bad header is reported as such, not fatal here
                head = None
            shape = f"{head.format} {head.height}x{head.width}" if head else "encoded (unknown header)"
            kind = "encoded"
        else:
            shape = f"{f.channels}x{f.height}x{f.width}"
            kind = "raw" if len(f.data) else "float"
        _count(summary, skey, kind, shape, f.label)
        if i in want:
            img = datum_to_array(f, color=None, where=f"{path}: record {skey!r}")
            picked.append(Record(skey, f.label, img))
        if i % 256 == 255:
            bar.update(256)


def _count(summary: DbSummary, key: str, kind: str, shape: str, label: int) -> None:
    if not summary.count:
        summary.first_key = key
    summary.last_key = key
    summary.count += 1
    summary.kinds[kind] += 1
    summary.shapes[shape] += 1
    summary.labels[label] += 1


def _to_bgr(image: np.ndarray) -> np.ndarray:
    img = image.transpose(1, 2, 0)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.shape[2] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] != 3:
        img = cv2.cvtColor(np.ascontiguousarray(img[:, :, :1]), cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img)


def contact_sheet(records: list[Record], *, cell: int = 96, columns: int = 0) -> np.ndarray:
    """Tile records (C x H x W, BGR) into one H x W x 3 BGR image, each cell labelled."""
    if not records:
        raise ConfigError("a contact sheet needs at least one record (--samples > 0)")
    columns = columns or int(np.ceil(np.sqrt(len(records))))
    rows = (len(records) + columns - 1) // columns
    sheet = np.full((rows * (cell + 2) + 2, columns * (cell + 2) + 2, 3), 40, np.uint8)
    for i, rec in enumerate(records):
        if rec.image is None:
            raise ConfigError(f"record {rec.key!r} is not decoded; a contact sheet needs pixels")
        img = _to_bgr(rec.image)
        h, w = img.shape[:2]
        scale = cell / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
        r, c = divmod(i, columns)
        y, x = 2 + r * (cell + 2), 2 + c * (cell + 2)
        sheet[y:y + size[1], x:x + size[0]] = img
        text = str(rec.label)
        cv2.putText(sheet, text, (x + 2, y + cell - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(sheet, text, (x + 2, y + cell - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return sheet


def write_contact_sheet(path: str | os.PathLike, records: list[Record], *, cell: int = 96) -> None:
    ok, buf = cv2.imencode(".png", contact_sheet(records, cell=cell))
    if not ok:
        raise ImageError(f"{path}: OpenCV could not encode the contact sheet as PNG")
    write_bytes_atomic(path, buf.tobytes())
