"""Both console scripts answer --help and --version, as installed commands."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import datakit


@pytest.mark.parametrize("tool", ["datakit", "trainer"])
def test_help_and_version(cli, tool):
    result = cli(tool, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout
    result = cli(tool, "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"{tool} {datakit.__version__}"


@pytest.mark.parametrize("tool", ["datakit", "trainer"])
def test_console_script_installed(tool):
    exe = shutil.which(tool)
    if exe is None:
        pytest.skip(f"{tool} is not on PATH (run the tests through `make test`, which installs it)")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_no_command_prints_help_and_fails(cli):
    result = cli("datakit")
    assert result.returncode == 2 and "usage:" in result.stdout


@pytest.mark.parametrize("tool", ["datakit", "trainer"])
def test_readme_command_table_lists_exactly_the_commands(tool):
    """README's table of `datakit` / `trainer` commands is the COMMANDS registry (split, transfer and grid were missing)."""
    import re
    from pathlib import Path

    from cli import datakit_main, trainer_main
    commands = {"datakit": datakit_main, "trainer": trainer_main}[tool].COMMANDS
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    table = re.search(rf"^\| `{tool}` \(the [a-z ]+ side\) \| \|\n\|---\|---\|\n((?:\|.*\n)+)", readme, re.M)
    assert table, f"README.md has no table of {tool} commands"
    documented = re.findall(r"^\| `([a-z-]+)` \|", table.group(1), re.M)
    assert sorted(documented) == sorted(commands), f"README's {tool} table: {documented}, the tool has {sorted(commands)}"
