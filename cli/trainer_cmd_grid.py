"""`trainer grid make | run | status | summary`: transfer studies as folders of nets."""

from __future__ import annotations

import argparse
import importlib

HELP = "Experiment grids (the transfer paper's study): make the net folders, run them, their status, the scores."

# sub-command -> module defining HELP, add_arguments(parser), run(args)
SUBCOMMANDS: dict[str, str] = {
    "make": "cli.grid_cmd_make",
    "run": "cli.grid_cmd_run",
    "status": "cli.grid_cmd_status",
    "summary": "cli.grid_cmd_summary",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="grid_command", metavar="SUBCOMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        q = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(q)
        q.set_defaults(_grid_run=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args._grid_run(args) or 0)
