"""What a wheel installs: every shipped recipe and prototxt is a data file (README: "installed with it
under <prefix>/share/datakit/"), so an installed datakit finds the same models/ and manifests/ a
checkout has (datakit.resources.bundled_dir)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")


def data_files() -> dict[str, list[str]]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["data-files"]


def installed_as(path: Path) -> str | None:
    """The share/ folder a checkout file is installed into, or None when no data-files glob takes it."""
    rel = path.relative_to(ROOT)
    for target, patterns in data_files().items():
        if any(rel.match(pattern) for pattern in patterns):
            return target
    return None


@pytest.mark.parametrize("folder", ["models", "manifests"])
def test_every_shipped_file_is_installed_beside_the_package(folder):
    shipped = [p for p in sorted((ROOT / folder).rglob("*")) if p.is_file() and p.suffix in {".prototxt", ".json", ".gz"}]
    assert shipped, f"nothing under {folder}/"
    for path in shipped:
        target = installed_as(path)
        rel = path.relative_to(ROOT)
        assert target is not None, f"{rel} is not in pyproject's [tool.setuptools.data-files]: a wheel would not install it"
        # bundled_dir() looks for share/datakit/<folder>/<same sub-path>
        assert target == f"share/datakit/{rel.parent}", f"{rel} would be installed under {target}"
