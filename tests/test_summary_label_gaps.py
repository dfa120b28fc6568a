"""`datakit inspect` reports label gaps in bounded memory, however large the gap."""

from __future__ import annotations

import tracemalloc
from collections import Counter

from datakit.summary import DbSummary


def test_a_huge_label_gap_is_counted_not_listed() -> None:
    summary = DbSummary("db", "lmdb", count=3, labels=Counter({0: 1, 1: 1, 2_000_000: 1}))
    tracemalloc.start()
    try:
        lines = summary.lines()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # the old list of every missing label took ~70 MB here (and 441 MB for label 10**7)
    assert ("  labels: 3 classes, 0..2000000; missing 1999998 labels, the first "
            "[2, 3, 4, 5, 6, 7, 8, 9, 10, 11]") in lines


def test_few_missing_labels_are_all_listed() -> None:
    summary = DbSummary("db", "lmdb", count=4, labels=Counter({0: 1, 2: 1, 5: 1, 7: 1}))
    assert "  labels: 4 classes, 0..7; missing [1, 3, 4, 6]" in summary.lines()
    from datakit.summary import missing_labels
    assert missing_labels([0, 2, 5, 7], first=2) == (4, [1, 3])
    assert missing_labels([3]) == (0, [])


def test_the_reported_label_of_a_wrapped_int32_needs_no_memory() -> None:
    from datakit.summary import missing_labels
    assert missing_labels([0, 1, 1661992959]) == (1661992957, list(range(2, 12)))
