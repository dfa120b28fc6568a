"""Where the bundled folders `manifests/` and `models/` are.

In a source checkout (and an editable install) they sit beside the packages.
A wheel installs them as data files under ``<prefix>/share/datakit/``
(pyproject's [tool.setuptools.data-files]), because they are recipes and
prototxts a user opens and edits, not Python modules.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def bundled_dir(name: str) -> Path:
    """The folder `name` ('manifests' or 'models'): the checkout's, else the installed copy."""
    candidates = [_SOURCE_ROOT / name,
                  Path(sys.prefix) / "share" / "datakit" / name,
                  Path(sysconfig.get_path("data")) / "share" / "datakit" / name]
    for path in candidates:
        if path.is_dir():
            return path
    return candidates[0]
