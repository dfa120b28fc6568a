"""Subcommand dispatch shared by `datakit` and `trainer`.

Each subcommand lives in its own module under cli/ that defines
``HELP: str``, ``add_arguments(parser)`` and ``run(args) -> int``. Keeping one
module per command lets each stage grow its options without touching the
others. Errors raised as DatakitError become one line on stderr and a
non-zero exit; Ctrl-C exits 130 after the command has written its summary; output into a
pipe whose reader has gone (``| head``) ends quietly with 141, as tools killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from datakit import __version__
from datakit.errors import DatakitError


def build_parser(prog: str, description: str, commands: dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in commands.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def run_main(prog: str, description: str, commands: dict[str, str],
             argv: Sequence[str] | None = None) -> int:
    parser = build_parser(prog, description, commands)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return code
    except BrokenPipeError:
        # The reader went away (`| head`): end quietly, as tools killed by SIGPIPE do (exit 141).
        # stdout is pointed at /dev/null so the interpreter's final flush cannot raise again.
        _quiet_stdout()
        return 141
    except DatakitError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        # A safety net for file-system errors library code did not wrap:
        # still one line naming the file, never a traceback.
        name = f"{err.filename}: " if err.filename else ""
        print(f"{prog}: error: {name}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _quiet_stdout() -> None:
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
