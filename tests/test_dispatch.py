"""cli/dispatch.py: building the parser imports only the command being run (fast start-up, issue 11 item 6).

Timings live in benchmarks/bench_startup.py; here we check what is imported, which decides them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAVY = ("numpy", "cv2", "aiohttp", "h5py", "lmdb", "google.protobuf", "tqdm", "datakit.mirror", "trainer.net")


def _modules_after(tool: str, argv: list[str]) -> set[str]:
    code = (f"import json, sys\nfrom cli.{tool}_main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(sys.modules)), file=sys.__stderr__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return set(json.loads(r.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("tool,argv", [("datakit", ["--help"]), ("datakit", ["--version"]), ("trainer", ["--help"]),
                                       ("datakit", [])])
def test_top_level_help_and_version_import_no_heavy_module(tool, argv):
    loaded = _modules_after(tool, argv)
    assert not [m for m in HEAVY if m in loaded]
    assert not [m for m in loaded if m.startswith("cli.cmd_") or m.startswith("cli.trainer_cmd_")]


def test_a_command_imports_its_own_module_only():
    loaded = _modules_after("datakit", ["mean", "--help"])
    assert "cli.cmd_mean" in loaded
    assert not [m for m in loaded if m.startswith("cli.cmd_") and m != "cli.cmd_mean"]
    assert not [m for m in HEAVY if m in loaded]  # its heavy imports wait for run()


def test_help_lists_every_command_with_its_help(cli):
    from cli.datakit_main import COMMANDS
    from cli.dispatch import command_help
    r = cli("datakit", "--help")
    assert r.returncode == 0
    for name, module in COMMANDS.items():
        assert name in r.stdout
        assert command_help(module).split()[0] in r.stdout
    import importlib
    assert command_help("cli.cmd_convert") == importlib.import_module("cli.cmd_convert").HELP
