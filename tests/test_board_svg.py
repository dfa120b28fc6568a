"""The board's server-drawn SVG: points, non-finite values, escaping, ticks."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from trainer.board.svg import Series, _log_ticks, bar_chart, line_chart, nice_ticks

NS = "{http://www.w3.org/2000/svg}"


def test_line_chart_points_skip_non_finite_values_and_parse_as_xml():
    svg = line_chart([Series("loss", [(0, 2.0), (10, math.nan), (20, 1.0), (30, math.inf), (40, 0.5)])], title="t")
    root = ET.fromstring(svg)
    [line] = root.iter(NS + "polyline")
    pts = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
    assert line.get("data-n") == "3" and len(pts) == 3
    xs, ys = zip(*pts)
    assert xs[0] < xs[1] < xs[2] and ys[0] < ys[1] < ys[2]   # y grows downwards in SVG as loss falls


def test_text_from_files_is_escaped():
    evil = '<script>alert(1)</script>" onload="x'
    svg = line_chart([Series(evil, [(0, 1.0), (1, 2.0)])], title=evil, xlabel=evil)
    assert "<script>" not in svg
    root = ET.fromstring(svg)
    assert not [e for e in root.iter() if e.tag.endswith("script") or "onload" in e.attrib]
    assert [p.get("data-series") for p in root.iter(NS + "polyline")] == [evil]
    bars = bar_chart([(evil, 3.0)], title="h")
    assert "<script>" not in bars and ET.fromstring(bars).find(NS + "rect[@class='bar']").get("data-label") == evil


def test_log_axis_drops_non_positive_values_and_empty_chart_says_so():
    svg = line_chart([Series("lr", [(0, 0.01), (1, 0.0), (2, 0.001)])], title="lr", ylog=True)
    [line] = ET.fromstring(svg).iter(NS + "polyline")
    assert line.get("data-n") == "2"
    assert "no points yet" in line_chart([Series("x", [])], title="empty")


def test_ticks():
    assert nice_ticks(0, 1, 5) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(3, 3) == [3]
    assert _log_ticks(-4, -1) == [1e-4, 1e-3, 1e-2, 1e-1]
    assert len(_log_ticks(math.log10(0.0098), math.log10(0.0101))) >= 2
