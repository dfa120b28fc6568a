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
