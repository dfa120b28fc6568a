"""Read and write prototxt text: nets and solvers, with errors that name FILE:LINE.

Text parsing is protobuf's own text_format; what we add is the file name and
line/column in every error, the V0/V1 upgrade on read (datakit.formats.upgrade),
and atomic writes.
"""

from __future__ import annotations

import bisect
import os
import re
from pathlib import Path
from typing import TypeVar

from google.protobuf import text_format
from google.protobuf.message import Message

from datakit.atomic import write_text_atomic
from datakit.errors import FormatError, MissingFormatFile
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
        raise MissingFormatFile(f"{path}: file not found") from None
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


_TOKEN = re.compile(r'#[^\n]*|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|[{}:<>]|[A-Za-z_][\w.]*|[-+]?[\d.][\w.+-]*|\S')


def layer_lines(text: str) -> list[tuple[str, int, int]]:
    """(name, line of its ``type`` field, line of its ``layer {``) for every layer block in prototxt ``text``.

    Protobuf's parsed messages keep no line numbers, so errors found after parsing (an
    unknown layer type, say) locate their layer here, by name, in the text it came from.
    Covers ``layer`` and old ``layers`` blocks at any depth (a solver's inline net_param too).
    """
    starts = [0] + [m.end() for m in re.finditer(r"\n", text)]
    tokens = [(m.group(), bisect.bisect_right(starts, m.start())) for m in _TOKEN.finditer(text)
              if not m.group().startswith("#")]
    frames: list[tuple[str, int, dict[str, tuple[str, int]]]] = []
    found: list[tuple[str, int, int]] = []
    for k, (tok, line) in enumerate(tokens):
        nxt = tokens[k + 1][0] if k + 1 < len(tokens) else ""
        after = tokens[k + 2][0] if k + 2 < len(tokens) else ""
        if tok in ("{", "<") or tok == ":" and nxt in ("{", "<"):
            continue
        if tok in ("}", ">"):
            if frames:
                kind, start, fields = frames.pop()
                if kind in ("layer", "layers"):
                    name = fields.get("name", ("", 0))[0].strip("\"'")
                    found.append((name, fields.get("type", ("", start))[1], start))
            continue
        if nxt in ("{", "<") or (nxt == ":" and after in ("{", "<")):
            frames.append((tok, line, {}))
        elif nxt == ":" and frames:
            frames[-1][2].setdefault(tok, (after, line))
    return found


def locate_layer(path: str | os.PathLike, name: str) -> int | None:
    """The line of layer ``name``'s ``type`` field in prototxt file ``path`` (None when not found)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return next((line for n, line, _ in layer_lines(text) if n == name), None)
