"""Options shared by the trainer commands (device, net phase/stage/level, positive counts, files that must exist)."""

from __future__ import annotations

import argparse

from datakit.errors import ConfigError
from datakit.formats import caffe_pb2


def add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where to run: the GPU via CuPy when available (auto), or force one")
    p.add_argument("--gpu", type=int, default=0, metavar="ID", help="CUDA device id (default 0)")


def add_state_options(p: argparse.ArgumentParser, default_phase: str) -> None:
    p.add_argument("--phase", choices=("TRAIN", "TEST"), default=default_phase,
                   help=f"net phase for include/exclude rules (default {default_phase})")
    p.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="net stage for include/exclude rules (repeatable)")
    p.add_argument("--level", type=int, default=0, help="net level for include/exclude rules")


def phase_of(name: str) -> int:
    return caffe_pb2.TRAIN if name == "TRAIN" else caffe_pb2.TEST


def positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def check_exists(path: str, what: str) -> None:
    import os
    if not os.path.exists(path):
        raise ConfigError(f"{path}: {what} not found")
