"""Read and write prototxt text: nets and solvers, with errors that name FILE:LINE.

Text parsing is protobuf's own text_format; what we add is the file name and
line/column in every error, the V0/V1 upgrade on read (datakit.formats.upgrade),
and atomic writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from google.protobuf import text_format
from google.protobuf.message import Message

from datakit.atomic import write_text_atomic
from datakit.errors import FormatError
from datakit.formats import caffe_pb2
from datakit.formats.upgrade import upgrade_net, upgrade_solver

M = TypeVar("M", bound=Message)


def parse_text(text: str, message: M, *, source: str = "<string>") -> M:
    """Parse prototxt `text` into `message`; a syntax error becomes 'SOURCE:LINE:COL: ...'."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        line, col = err.GetLine(), err.GetColumn()
        # ParseError's own text starts with "LINE:COL : "; keep only the reason.
        reason = str(err)
        prefix = f"{line}:{col} : "
        if reason.startswith(prefix):
            reason = reason[len(prefix):]
        where = f"{source}:{line}:{col}" if line else source
        raise FormatError(f"{where}: {reason.strip()}") from None
    return message


def _read_text(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise FormatError(f"{path}: not a text file ({err.reason} at byte {err.start}); "
                          "is this a binary .caffemodel or .binaryproto?") from None


def parse_net(text: str, *, source: str = "<string>", upgrade: bool = True) -> caffe_pb2.NetParameter:
    """A NetParameter from prototxt text, upgraded to the current layer form unless `upgrade=False`."""
    net = parse_text(text, caffe_pb2.NetParameter(), source=source)
    return upgrade_net(net, source=source) if upgrade else net


def read_net(path: str | os.PathLike, *, upgrade: bool = True) -> caffe_pb2.NetParameter:
    """Read a net prototxt file (any Caffe generation) as a current-form NetParameter."""
    return parse_net(_read_text(path), source=str(path), upgrade=upgrade)


def parse_solver(text: str, *, source: str = "<string>") -> caffe_pb2.SolverParameter:
    return upgrade_solver(parse_text(text, caffe_pb2.SolverParameter(), source=source), source=source)


def read_solver(path: str | os.PathLike) -> caffe_pb2.SolverParameter:
    """Read a solver prototxt (old `solver_type` enums upgraded to `type`)."""
    return parse_solver(_read_text(path), source=str(path))


def to_text(message: Message) -> str:
    return text_format.MessageToString(message)


def write_prototxt(path: str | os.PathLike, message: Message) -> None:
    """Write any message as prototxt text, atomically."""
    write_text_atomic(path, to_text(message))
