"""A database's card: ``datakit inspect``'s summary, the label histogram and a contact sheet.

Built with :func:`datakit.summary.inspect_db` (every record is read once, encoded records sized
from their headers) and kept until a file of the database changes. A half-written database
(``DB.incomplete``, still being converted) or a corrupt one gives a card with the error line
instead of the summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.board.svg import bar_chart

__all__ = ["DbCard", "database_card", "SAMPLES"]

SAMPLES = 16


@dataclass
class DbCard:
    """What the card shows; `sheet_png` is served on its own URL."""

    path: str
    error: str | None
    lines: list[str]
    summary: dict
    histogram: str
    sheet_png: bytes | None

    def to_json(self) -> dict:
        return {"path": self.path, "error": self.error, "lines": self.lines, "summary": self.summary,
                "histogram": self.histogram, "has_sheet": self.sheet_png is not None}


def files_outside(root: Path, path: Path) -> list[str]:
    """Files the database at `path` would read from outside `root`: symlinks out of its folder,
    or .h5 files its list.txt names elsewhere (HDF5 lists hold paths of any kind)."""
    from datakit.db import detect_backend
    from datakit.db.hdf5_backend import hdf5_files

    files = [p for p in path.iterdir()] if path.is_dir() else [path]
    kind = detect_backend(path) if path.is_dir() else None
    if kind == "hdf5":
        files += hdf5_files(path)
    elif kind == "sharded":    # and each shard's own files
        files += [p for shard in files if shard.is_dir() and not shard.is_symlink() for p in shard.iterdir()]
    out = []
    for f in files:
        real = f.resolve()
        if real != root and root not in real.parents:
            out.append(f.name)
    return out


def database_card(path: Path, name: str, *, samples: int = SAMPLES, root: Path | None = None) -> DbCard:
    """Inspect the database at `path` (blocking: run it in a thread); with `root`, refuse one
    that reads files outside it."""
    import cv2

    from datakit.summary import contact_sheet, inspect_db

    try:
        outside = files_outside(root, path) if root is not None else []
        if outside:
            return DbCard(name, f"{name}: reads files outside the board's folder ({', '.join(outside[:3])}); "
                                "not shown", [], {}, "", None)
        summary, picked = inspect_db(path, samples=samples)
    except Exception as err:  # noqa: BLE001 - a half-written or corrupt database is shown, not fatal
        return DbCard(name, _one_line(err, name), [], {}, "", None)
    summary.path = name
    labels = sorted(summary.labels.items())
    histogram = bar_chart([(str(k), float(v)) for k, v in labels], title="records per label",
                          xlabel="label", ylabel="records", css_class="chart histogram")
    png = None
    if picked:
        ok, buf = cv2.imencode(".png", contact_sheet(picked, cell=80))
        png = buf.tobytes() if ok else None
    return DbCard(name, None, summary.lines(), summary.to_json(), histogram, png)


def _one_line(err: BaseException, name: str) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if name in text or "/" in text else f"{name}: {text}"
