"""`trainer board DIR`: a local web dashboard of runs, grids, databases and models under DIR."""

from __future__ import annotations

import argparse

HELP = "Serve a web dashboard of the runs (live curves), grids, databases and models under DIR."


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"port {n} is not in 0..65535")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="folder to show: its logs, grid folders, databases and model folders, at any depth")
    p.add_argument("--port", type=_port, default=8470, help="TCP port (default 8470; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only); any other address requires the "
                        "token printed at start-up on every request")
    p.add_argument("--token", help="require this token (default: a random one, only when --host is not loopback)")
    p.add_argument("--poll", type=float, default=1.0, metavar="SECONDS",
                   help="how often to look for new or grown files (default 1)")
    p.add_argument("--stale", type=float, default=600.0, metavar="SECONDS",
                   help="a log without an end line and not written for this long is shown as stopped (default 600)")
    p.add_argument("--max-upload", type=float, default=8.0, metavar="MB",
                   help="largest image accepted by classify (default 8 MB)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from datakit.errors import ConfigError
    from trainer.board import serve

    if not Path(args.dir).is_dir():
        raise ConfigError(f"{args.dir}: not a folder")
    if args.poll <= 0 or args.stale <= 0 or args.max_upload <= 0:
        raise ConfigError("--poll, --stale and --max-upload must be positive")
    try:
        serve(args.dir, host=args.host, port=args.port, token=args.token, poll=args.poll, stale_after=args.stale,
              max_upload=int(args.max_upload * 1024 * 1024))
    except OSError as err:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    return 0
