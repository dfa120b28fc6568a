"""The transfer paper's figures from a study's scores (`trainer plot --transfer`).

Panels, each drawn only when its nets are present:
- Figure 2: one marker per net against n (the base nets of the target halves at n = 0, then BnB, BnB+, AnB, AnB+ with a
  small offset each so that markers do not hide each other) and a line through each family's
  per-n means (the base mean drawn as a dotted level);
- natural / man-made: the natman base nets and transfers, one line per target half;
- random frozen layers: the random-frozen nets against n, beside the base level;
- reduced volume: score against images per class (log axis).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.grid.summary import NetScore

#: a panel draws the rows it is about on a matplotlib Axes
Panel = Callable[[Any, list[NetScore]], None]

STYLE = {  # family: (colour, marker, x offset)
    "base": ("white", "o", 0.0), "BnB": ("#1f4eb4", "o", -0.15), "BnB+": ("#7fb2ff", "o", -0.05),
    "AnB": ("#c0262d", "D", 0.05), "AnB+": ("#ff9aa0", "D", 0.15),
}


def _means(rows: list[NetScore], family: str) -> list[tuple[int, float]]:
    by_n: dict[int, list[float]] = {}
    for r in rows:
        if r.family == family and r.score is not None and r.n is not None:
            by_n.setdefault(r.n, []).append(r.score)
    return sorted((n, sum(v) / len(v)) for n, v in by_n.items())


def target_bases(rows: list[NetScore]) -> list[NetScore]:
    """The base nets a transfer family is compared with: those trained on a half that some transfer net
    of the same split targets (all base nets when the study has no transfer net). With transfers in both
    directions (the paper's grid) that is every base net; with only A -> B and B -> B, the B nets."""
    targets = {(r.split, r.half) for r in rows if r.family in ("BnB", "BnB+", "AnB", "AnB+")}
    bases = [r for r in rows if r.family == "base"]
    return [r for r in bases if (r.split, r.half) in targets] if targets else bases


def _figure2(ax, rows: list[NetScore], ylabel: str) -> None:
    rows = [r for r in rows if r.family != "base"] + target_bases(rows)
    base = _means(rows, "base")
    for family, (colour, marker, dx) in STYLE.items():
        pts = [(r.n, r.score) for r in rows if r.family == family and r.score is not None and r.n is not None]
        if not pts:
            continue
        ax.scatter([n + dx for n, _ in pts], [s for _, s in pts], c=colour, marker=marker, edgecolors="black",
                   linewidths=0.6, s=30, zorder=3, label=f"{family} ({len(pts)})")
        means = _means(rows, family)
        if family != "base" and means:
            line = ([(0, base[0][1])] if base else []) + means
            ax.plot([n for n, _ in line], [s for _, s in line], color=colour if colour != "white" else "grey",
                    lw=1.5, zorder=2)
    if base:
        ax.axhline(base[0][1], color="grey", ls=":", lw=1)
    ax.set_xlabel("layer n at which the net is chopped and retrained")
    ax.set_ylabel(ylabel)
    ax.set_title("Figure 2: transfer between random halves")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over a marker


def _natman(ax, rows: list[NetScore]) -> None:
    for half, colour in (("A", "#2a9d3f"), ("B", "#8a4fbf")):
        base = [r.score for r in rows if r.family == "natman-base" and r.half == half and r.score is not None]
        pts = sorted((r.n, r.score) for r in rows if r.family.startswith("natman-") and r.family != "natman-base"
                     and r.half == half and r.score is not None)
        line = ([(0, base[0])] if base else []) + pts
        if line:
            ax.plot([n for n, _ in line], [s for _, s in line], marker="o", color=colour,
                    label=f"target half {half}" + (" (man-made)" if half == "B" else " (natural)"))
    ax.set_xlabel("n")
    ax.set_title("natural / man-made halves (frozen transfer)")
    ax.legend(fontsize=7)


def _random_frozen(ax, rows: list[NetScore]) -> None:
    pts = sorted((r.n, r.score) for r in rows if r.family == "random-frozen" and r.score is not None)
    base = _means(rows, "base") or _means(rows, "whole")
    line = ([(0, base[0][1])] if base else []) + pts
    ax.plot([n for n, _ in line], [s for _, s in line], marker="s", color="#444444", label="random, frozen")
    for family in ("AnB",):
        means = _means(rows, family)
        if means:
            ax.plot([n for n, _ in means], [s for _, s in means], color=STYLE[family][0], ls="--", label=family)
    ax.set_xlabel("n (first n layers random and frozen)")
    ax.set_title("random frozen layers")
    ax.legend(fontsize=7)


def _reduced(ax, rows: list[NetScore]) -> None:
    pts = sorted((r.per_class, r.score) for r in rows if r.family == "reduced" and r.score is not None
                 and r.per_class)
    ax.plot([p for p, _ in pts], [s for _, s in pts], marker="o", color="#333333")
    ax.set_xscale("log")
    ax.set_xlabel("training images per class")
    ax.set_title("reduced volume")


def plot_transfer(rows: list[NetScore], out: str | os.PathLike, title: str | None = None,
                  ylabel: str = "top-1 accuracy (mean of the 10 best tests)") -> Path:
    """Draw the panels the rows allow into a PNG at `out` (atomically); returns the path."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from datakit.atomic import write_bytes_atomic

    families = {r.family for r in rows if r.score is not None}

    def figure2(ax: Any, rs: list[NetScore]) -> None:   # the main panel, with the caller's y label
        _figure2(ax, rs, ylabel)

    panels: list[tuple[Panel, bool]] = [(figure2, bool(families & set(STYLE)))]
    panels.append((_natman, any(f.startswith("natman-") for f in families)))
    panels.append((_random_frozen, "random-frozen" in families))
    panels.append((_reduced, "reduced" in families))
    chosen = [draw for draw, present in panels if present]
    if not chosen:
        from datakit.errors import ConfigError
        raise ConfigError("no scored nets of a transfer family (base, BnB, AnB, ...) to plot")
    others = [draw for draw in chosen if draw is not figure2]
    top = figure2 in chosen
    rows_n = int(top) + int(bool(others))
    cols = max(1, len(others))
    fig = plt.figure(figsize=(max(8.0, 4.2 * cols), 5.0 * rows_n))
    grid = fig.add_gridspec(rows_n, cols, height_ratios=[1.4, 1][:rows_n] if rows_n == 2 else None)
    placed: list[tuple[Any, Panel]] = [(fig.add_subplot(grid[0, :]), figure2)] if top else []
    placed += [(fig.add_subplot(grid[rows_n - 1, i]), draw) for i, draw in enumerate(others)]
    for ax, draw in placed:
        draw(ax, rows)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    write_bytes_atomic(out, buf.getvalue())
    return Path(out)
