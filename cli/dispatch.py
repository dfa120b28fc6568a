"""Subcommand dispatch shared by `datakit` and `trainer`.

Each subcommand lives in its own module under cli/ that defines
``HELP: str``, ``add_arguments(parser)`` and ``run(args) -> int``. Keeping one
module per command lets each stage grow its options without touching the
others. Errors raised as DatakitError become one line on stderr and a
non-zero exit; Ctrl-C exits 130 after the command has written its summary; output into a
pipe whose reader has gone (``| head``) ends quietly with 141, as tools killed by SIGPIPE.

Start-up stays fast (benchmarks/bench_startup.py): only the module of the
command being run is imported. The other commands' one-line help, for
``--help``, is read from their modules' source (a literal ``HELP``) without
importing them, so ``datakit --help`` loads no NumPy, OpenCV or aiohttp.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import IO

from datakit import __version__
from datakit.errors import DatakitError


def command_help(module_name: str) -> str:
    """A command module's HELP, read from its source when it is a literal (else the module is imported)."""
    import ast

    spec = importlib.util.find_spec(module_name)
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
        try:
            with open(spec.origin, encoding="utf-8") as fh:
                tree = ast.parse(fh.read(), spec.origin)
            for node in tree.body:
                if (isinstance(node, ast.Assign) and len(node.targets) == 1
                        and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "HELP"):
                    return str(ast.literal_eval(node.value))
        except (OSError, SyntaxError, ValueError):
            pass
    return importlib.import_module(module_name).HELP


def _chosen(argv: Sequence[str], commands: dict[str, str]) -> str | None:
    """The command named on the command line: the first argument that is not an option (the top-level
    options, -h and --version, take no value)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in commands else None
    return None


def _list_only(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Show command `name` in --help without building its parser (each parser argparse builds costs
    gettext look-ups on disk); it is never selected, since the command on the line is always built."""
    try:
        sub._choices_actions.append(sub._ChoicesPseudoAction(name, (), help_text))
        sub._name_parser_map[name] = None
    except AttributeError:  # an argparse without these internals: build it after all
        sub.add_parser(name, help=help_text)


def build_parser(prog: str, description: str, commands: dict[str, str],
                 argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with `argv`, only the command it names gets its arguments (and its module imported)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen(argv, commands) if argv is not None else None
    for name, module_name in commands.items():
        if argv is not None and name != chosen:
            # the other commands' help shows only in the top-level --help, never once a command is named:
            # reading their sources then would be start-up time spent for nothing
            _list_only(sub, name, command_help(module_name) if chosen is None else "")
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def run_main(prog: str, description: str, commands: dict[str, str],
             argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog, description, commands, argv)
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
        quiet_stream(sys.stdout)
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


def quiet_stream(stream: IO) -> None:
    """Point `stream`'s file descriptor at /dev/null: its reader (a pipe, a terminal that hung up) is gone,
    and the interpreter's final flush must not fail again."""
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
