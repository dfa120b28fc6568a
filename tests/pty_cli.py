"""Run a CLI command with stderr on a pseudo-terminal, as a user at a terminal does (for the bar policy)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import termios
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_on_terminal(*args: str, cwd: Path | None = None, timeout: float = 300) -> tuple[int, str, str]:
    """(exit status, stdout, what reached the terminal on stderr) of `python -m cli.<tool>_main ARGS`."""
    tool, *rest = args
    module = {"datakit": "cli.datakit_main", "trainer": "cli.trainer_main"}[tool]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 columns wide
    try:
        proc = subprocess.Popen([sys.executable, "-m", module, *rest], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=slave)
    finally:
        os.close(slave)
    seen = bytearray()
    try:
        while True:  # read the terminal until the child closes it (EIO on Linux), so it never blocks on a full pty
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        out = proc.stdout.read() if proc.stdout else b""
        rc = proc.wait(timeout=timeout)
    finally:
        os.close(master)
        if proc.stdout:
            proc.stdout.close()
    return rc, out.decode(errors="replace"), seen.decode(errors="replace")


def assert_one_report_format(path: Path) -> dict:
    """A --report file is valid JSON in datakit.report.write_report's one format (indent 1, final newline)."""
    text = Path(path).read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=1) + "\n"
    return data
