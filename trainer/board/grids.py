"""A grid's card: the status table of ``trainer grid status`` and the paper's figure.

Written against the contract of ``trainer.grid`` (experiment grids): ``is_grid(path) -> bool``
and ``grid_status(grid_dir) -> list[NetStatus]``, a NetStatus having ``net``, ``family``
("base", "BnB", "BnB+", "AnB", "AnB+", ...), ``n``, ``split``, ``state`` ("done", "running",
"waiting", "failed", "skipped"), ``iteration``, ``best_accuracy`` and ``score``. The module is
imported only when a grid card is asked for, and a card says so when it is not installed,
instead of failing. Tests pass their own object of that shape as `grid`.

The figure is the transfer paper's: accuracy against n (the number of layers copied), one line
per family, the base nets as a dashed level; nets not done yet are open circles, so the figure
fills in as the grid runs. The y value of a net is its ``score`` when it has one, else its
``best_accuracy``.
"""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

from trainer.board.svg import Series, line_chart

__all__ = ["load_grid_module", "grid_card", "grid_figure", "STATUS_FIELDS"]

STATUS_FIELDS = ("net", "family", "n", "split", "state", "iteration", "best_accuracy", "score")
MISSING = ("experiment grids need the trainer.grid module (`trainer grid`), which this install of the "
           "trainer does not have; update the package to see this grid")


def load_grid_module() -> ModuleType | None:
    """``trainer.grid`` when it is installed, else None."""
    try:
        return importlib.import_module("trainer.grid")
    except ImportError:
        return None


def _status_dict(status: Any) -> dict:
    return {name: getattr(status, name, None) for name in STATUS_FIELDS}


def _value(row: dict) -> float | None:
    v = row["score"] if row["score"] is not None else row["best_accuracy"]
    return float(v) if v is not None else None


def grid_figure(rows: list[dict]) -> str:
    """Accuracy against n per family (SVG), as in the transfer paper's figure."""
    series: list[Series] = []
    by_family: dict[str, list[tuple[dict, float]]] = {}   # the rows with a value, and that value
    for row in rows:
        value = _value(row)
        if value is None:
            continue
        by_family.setdefault(str(row["family"]), []).append((row, value))
    ns = [int(r["n"]) for r in rows if r["n"] is not None]
    x_range = (min(ns) - 0.5, max(ns) + 0.5) if ns else None
    for family in sorted(by_family):
        members = by_family[family]
        with_n = sorted((rv for rv in members if rv[0]["n"] is not None), key=lambda rv: (rv[0]["n"], rv[0]["net"]))
        if with_n:
            series.append(Series(family, [(float(r["n"]), v) for r, v in with_n], markers=True,
                                 hollow=[r["state"] != "done" for r, _ in with_n]))
        base = [v for r, v in members if r["n"] is None]
        if base and x_range is not None:   # x_range is None exactly when no row has an n
            level = sum(base) / len(base)
            series.append(Series(f"{family} (mean of {len(base)})", [(x_range[0], level), (x_range[1], level)],
                                 dashed=True))
    values = [v for members in by_family.values() for _, v in members]
    y_range = None
    if values and all(0 <= v <= 1 for v in values):
        y_range = (max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.05))
    return line_chart(series, title="accuracy against n, per family", xlabel="n (layers copied)",
                      ylabel="accuracy", x_range=x_range, y_range=y_range, css_class="chart grid-figure",
                      height=260, empty_text="no net has finished yet")


def grid_card(grid_dir: Path, name: str, grid: Any = None) -> dict:
    """The card of the grid in `grid_dir`: rows, counts per state and the figure, or an error."""
    if grid is None:
        grid = load_grid_module()
    if grid is None:
        return {"path": name, "error": MISSING, "rows": [], "counts": {}, "figure": ""}
    try:
        if not grid.is_grid(grid_dir):
            return {"path": name, "error": f"{name}: not a grid (grid.json is unreadable?)", "rows": [],
                    "counts": {}, "figure": ""}
        rows = [_status_dict(s) for s in grid.grid_status(grid_dir)]
    except Exception as err:  # noqa: BLE001 - any failure of one grid is shown on its card
        return {"path": name, "error": f"{name}: {err}", "rows": [], "counts": {}, "figure": ""}
    counts = Counter(str(r["state"]) for r in rows)
    return {"path": name, "error": None, "rows": rows, "counts": dict(counts), "figure": grid_figure(rows)}
