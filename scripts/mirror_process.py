"""Run `datakit mirror` as a child process, for the demo and the benchmarks.

A separate process keeps the server off the caller's CPU core and GIL. This
lives in scripts/, not in the library, because it starts the command-line
tool (``python -m cli.datakit_main mirror``): datakit itself never depends on
the CLI's module names.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from datakit.errors import ConfigError


@contextlib.contextmanager
def mirror_subprocess(args: Sequence[str] = (), *, python: str | None = None,
                      timeout: float = 30.0) -> Iterator[str]:
    """Start ``datakit mirror --port 0 ARGS`` as a child process; yields its base URL.

    A separate process keeps the server off the caller's CPU core and GIL (the
    demo and the benchmark use this); the child is terminated on exit.
    """
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([python or sys.executable, "-m", "cli.datakit_main", "mirror", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = _read_line(proc, timeout)
        if not line.startswith("http://"):
            err = proc.stderr.read() if proc.poll() is not None else ""
            raise ConfigError(f"datakit mirror did not start: {(line + err).strip() or 'no output'}")
        yield line.strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""
