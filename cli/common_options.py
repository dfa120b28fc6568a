"""Options several commands share, defined once so that they read and behave the same everywhere.

Light on purpose: imported while the parser is built (no NumPy, no OpenCV).
"""

from __future__ import annotations

import argparse


def add_progress_flags(p: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress``: always / never draw a bar; neither: only on a terminal (stderr)."""
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show a progress bar (default: only when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")


def add_backend_flag(p: argparse.ArgumentParser, **kwargs: object) -> None:
    """``--backend``, its choices read from the database registry (datakit.db.BACKENDS)."""
    from datakit.db import backend_names
    p.add_argument("--backend", choices=backend_names(), **kwargs)  # type: ignore[arg-type]
