"""A `trainer time --report` JSON summed up in one line: the step and its largest layers.

The issue-16 benchmarks print it beside their ratios so that a run on a machine kind where a
ratio misses says where our step goes there, without a second session to ask.
"""

from __future__ import annotations


def largest_layers(report: dict, count: int = 6) -> str:
    """``forward+backward X ms; largest layers, ms forward+backward: conv2 4.51+6.70, ...`` (``count`` layers)."""
    layers = sorted(report["layers"], key=lambda r: -(r["forward_ms"] + r["backward_ms"]))
    top = ", ".join(f"{r['name']} {r['forward_ms']:.2f}+{r['backward_ms']:.2f}" for r in layers[:count])
    step = report["forward_ms"] + report["backward_ms"]
    return f"forward+backward {step:.1f} ms; largest layers, ms forward+backward: {top}"
