"""Every `datakit` / `trainer` command in README.md's shell blocks parses with the real command line.

A newcomer copies these lines as they are; an option renamed or removed in the code, or a
positional argument added, must fail here rather than on their machine. Only the parsing is
checked (paths in the README are placeholders), with argparse's own rules: unknown options,
missing or extra arguments and invalid choices all fail.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from cli import datakit_main, trainer_main
from cli.dispatch import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"
TOOLS = {"datakit": datakit_main.COMMANDS, "trainer": trainer_main.COMMANDS}


def shell_blocks(text: str) -> list[str]:
    """The bodies of the ```sh (and unlabelled) fenced blocks, continuation lines joined."""
    blocks: list[str] = []
    current: list[str] = []
    inside = keep = False
    for line in text.splitlines():
        if line.startswith("```"):
            if not inside:
                inside, keep, current = True, line.strip() in ("```sh", "```"), []
            else:
                if keep:
                    blocks.append("\n".join(current).replace("\\\n", " "))
                inside = False
        elif inside:
            current.append(line)
    return blocks


def readme_commands(text: str) -> list[list[str]]:
    """Each `datakit ...` / `trainer ...` invocation (a line, or one part of a `&&` / `;` / `|` chain), as argv."""
    found = []
    for block in shell_blocks(text):
        for line in block.splitlines():
            line = re.sub(r"\s#.*$", "", line).strip()  # a trailing comment
            # shell variables ($F/deploy.prototxt, --seed $S) stand for a path or a number: 1 parses as both
            line = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "1", line)
            for part in re.split(r"&&|\|\||;|\|", line):
                try:
                    argv = shlex.split(part)
                except ValueError:
                    continue
                if len(argv) >= 2 and argv[0] in TOOLS and not argv[1].endswith(":"):
                    found.append(argv)
    return found


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def test_the_readme_shows_commands_of_both_tools():
    """The extraction itself works (a broken regex must not make the test below vacuous)."""
    tools = {argv[0] for argv in COMMANDS}
    assert tools == {"datakit", "trainer"} and len(COMMANDS) >= 30, COMMANDS


def test_a_renamed_option_is_caught():
    """What the check below relies on: argparse refuses an unknown option of a README-style line."""
    with pytest.raises(SystemExit):
        _parse(["datakit", "convert", "root", "list.txt", "db", "--resize-hieght", "256"])


def _parse(argv: list[str]) -> argparse.Namespace:
    tool, rest = argv[0], argv[1:]
    parser = build_parser(tool, "", TOOLS[tool], rest)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            return parser.parse_args(rest)
        except SystemExit:
            raise SystemExit(f"{' '.join(argv)}: {err.getvalue().strip().splitlines()[-1]}") from None


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a[:3]) for a in COMMANDS])
def test_readme_command_parses(argv):
    args = _parse(argv)
    assert args.command == argv[1]
