"""Caffe image lists: one ``relative/path label`` per line.

This is the format of Caffe's ``train.txt`` / ``val.txt`` as read by
``convert_imageset`` and the ImageData layer. Caffe takes the label from after
the *last* space, so paths may contain spaces; we do the same.

Caffe reads these lists without any checks, and a bad list shows up much
later as a net that never converges (labels not starting at 0, gaps, labels
>= num_output) or as a crash halfway through a conversion (missing file). The
checks here run before any work starts and name ``LIST:LINE`` for every
problem.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from datakit.atomic import atomic_write
from datakit.errors import ListError, MissingListFile


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One line of an image list: the path as written, its label, its 1-based line number."""

    path: str
    label: int
    line: int


ERROR = "error"
WARNING = "warning"
# What check_list looks for, each an error unless the caller's `severity` says otherwise.
CHECKS = ("syntax", "escape", "duplicate", "label-gap", "missing-file")


@dataclass
class ListCheck:
    """The result of checking a whole list: its entries, every problem (error) and every warning found."""

    list_path: str
    entries: list[ListEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # findings per check name (problems and warnings)
    missing: list[str] = field(default_factory=list)  # the missing-file findings (also among the above)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def labels(self) -> Counter:
        return Counter(e.label for e in self.entries)

    def summary(self) -> str:
        return (f"{self.list_path}: {len(self.entries)} records, {len(self.labels)} classes "
                f"(labels {min(self.labels, default=0)}..{max(self.labels, default=-1)})")

    def raise_if_problems(self) -> None:
        if self.problems:
            more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
            raise ListError(self.problems[0] + more)


def plainly_inside(path: str) -> bool:
    """True for a relative path that cannot leave its root: no leading slash, no '..', no drive colon.

    A string test cheap enough for every record of a large list (pathlib's
    parsing is far slower); what it does not accept goes through the full
    test (_path_escapes / safe_join), which decides and words the error.
    """
    return bool(path) and path[0] not in "/\\" and ".." not in path and ":" not in path


def _path_escapes(path: str) -> bool:
    """True when `path` is absolute or climbs out of its root with '..'."""
    if path.startswith(("/", "\\")) or PureWindowsPath(path).drive:
        return True
    parts = PurePosixPath(path.replace("\\", "/")).parts
    return ".." in parts


def safe_join(root: str | os.PathLike, relpath: str) -> Path:
    """Join `relpath` under `root`, refusing absolute paths and '..' components.

    Used for every path that comes from a list file or a URL, so that no input
    can make datakit read or write outside the folder the user named.
    """
    if not relpath or _path_escapes(relpath):
        raise ListError(f"path {relpath!r} escapes its root folder {str(root)!r} "
                        "(absolute paths and '..' are not allowed)")
    return Path(root) / relpath


def parse_line(text: str, where: str) -> tuple[str, int]:
    """Split one list line into (path, label); `where` is 'LIST:LINE' for errors."""
    stripped = text.rstrip("\r\n").rstrip()
    cut = max(stripped.rfind(" "), stripped.rfind("\t"))
    if cut <= 0:
        raise ListError(f"{where}: expected 'PATH LABEL', got {stripped!r}")
    path, label_text = stripped[:cut].rstrip(), stripped[cut + 1:]
    return path, parse_label(label_text, where)


# Caffe's Datum.label (and the ImageData / Data layers' label blobs) is an int32.
LABEL_MAX = 2**31 - 1


def parse_label(text: str, where: str) -> int:
    """The label `text` as an int in 0..LABEL_MAX; ListError naming `where` ('FILE:LINE') otherwise.

    The one parser for labels read from image lists and manifests, so that
    check-list, convert and assemble accept exactly the same labels. A label
    above int32's range would be stored wrapped (2147483648 reads back as
    -2147483648) and pass silently into training, so it is refused as a
    negative one is.
    """
    try:
        label = int(text)
    except ValueError:
        raise ListError(f"{where}: label {text!r} is not an integer") from None
    if label < 0:
        raise ListError(f"{where}: label {label} is negative (labels must be 0..K-1)")
    if label > LABEL_MAX:
        raise ListError(f"{where}: label {label} does not fit Caffe's int32 Datum.label "
                        f"(labels must be 0..{LABEL_MAX})")
    return label


def _numbered_lines(list_path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every non-blank line; ListError for a missing or non-UTF-8 file.

    Read as utf-8-sig: lists saved by Windows editors start with a BOM, which
    would otherwise become part of the first path (and that image 'missing').
    """
    name = str(list_path)
    try:
        fh = open(list_path, encoding="utf-8-sig")
    except FileNotFoundError:
        raise MissingListFile(f"{name}: list file not found") from None
    with fh:
        try:
            for number, text in enumerate(fh, start=1):
                if text.strip():
                    yield number, text
        except UnicodeDecodeError as err:
            raise ListError(f"{name}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None


def iter_list(list_path: str | os.PathLike) -> Iterator[ListEntry]:
    """Stream the entries of a list file; raises ListError at the first malformed line.

    Blank lines are skipped. Only the syntax of each line is checked here; use
    `check_list` for the whole-list checks (labels, duplicates, files).
    """
    for number, text in _numbered_lines(list_path):
        path, label = parse_line(text, f"{list_path}:{number}")
        yield ListEntry(path, label, number)


def check_list(list_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
               allow_label_gaps: bool = False, check_files: bool = False,
               allow_absolute: bool = False, severity: Mapping[str, str] | None = None) -> ListCheck:
    """Read a whole list and collect every finding as 'LIST:LINE: message'.

    Checks (the names of CHECKS): ``syntax`` (a path and an integer label >= 0),
    ``escape`` (paths that leave the root: absolute or '..', unless
    `allow_absolute` for Caffe's absolute lists), ``duplicate`` paths,
    ``label-gap`` (labels that do not start at 0 or leave gaps, unless
    `allow_label_gaps`) and, with `check_files`, ``missing-file`` under `root`.
    Each finding is a problem (ERROR) unless `severity` maps its check to
    WARNING (``datakit convert`` warns of duplicates and label gaps, which
    Caffe accepts, and refuses the rest).
    """
    levels = {name: ERROR for name in CHECKS} | dict(severity or {})
    name = str(list_path)
    result = ListCheck(name)

    def report(check: str, message: str) -> None:
        (result.problems if levels[check] == ERROR else result.warnings).append(message)
        result.counts[check] += 1
        if check == "missing-file":
            result.missing.append(message)

    seen: dict[str, int] = {}
    for number, text in _numbered_lines(list_path):
        where = f"{name}:{number}"
        try:
            path, label = parse_line(text, where)
        except ListError as err:
            report("syntax", str(err))
            continue
        entry = ListEntry(path, label, number)
        result.entries.append(entry)
        if not plainly_inside(path) and _path_escapes(path) and not (
                allow_absolute and os.path.isabs(path) and ".." not in Path(path).parts):
            report("escape", f"{where}: path {path!r} escapes the image root "
                             "(absolute paths and '..' are not allowed"
                             + ("" if allow_absolute else "; --allow-absolute accepts absolute ones") + ")")
            continue
        if path in seen:
            report("duplicate", f"{where}: duplicate of line {seen[path]} ({path!r})")
        else:
            seen[path] = number
        if check_files:
            full = Path(path) if os.path.isabs(path) else Path(root or ".") / path
            if not full.is_file():
                what = "not a regular file" if full.exists() else "file not found"  # a folder, a FIFO
                report("missing-file", f"{where}: {what}: {full}")
    if not allow_label_gaps and result.entries:
        for problem in _label_gap_problems(name, result.entries):
            report("label-gap", problem)
    return result


def _label_gap_problems(name: str, entries: list[ListEntry]) -> list[str]:
    """Labels must be exactly 0..K-1: report a start above 0 and each missing label."""
    first_line: dict[int, int] = {}
    for e in entries:
        first_line.setdefault(e.label, e.line)
    present = sorted(first_line)
    problems = []
    hint = "Caffe's classifiers need labels 0..K-1 with no gaps; --allow-label-gaps accepts this list"
    if present[0] != 0:
        problems.append(f"{name}:{first_line[present[0]]}: labels start at {present[0]}, not 0 ({hint})")
    for lower, upper in zip(present, present[1:]):
        if upper != lower + 1:
            missing = f"{lower + 1}" if upper == lower + 2 else f"{lower + 1}..{upper - 1}"
            problems.append(f"{name}:{first_line[upper]}: label {upper} leaves a gap: "
                            f"no record has label {missing} ({hint})")
    return problems


def read_list(list_path: str | os.PathLike, **checks) -> list[ListEntry]:
    """`check_list` then raise ListError on the first problem; returns the entries."""
    result = check_list(list_path, **checks)
    result.raise_if_problems()
    return result.entries


def format_line(path: str, label: int) -> str:
    if "\n" in path or "\r" in path:
        raise ListError(f"path {path!r} contains a line break and cannot be written to a list")
    return f"{path} {int(label)}\n"


def write_list(list_path: str | os.PathLike, entries: Iterable[tuple[str, int] | ListEntry]) -> int:
    """Write 'PATH LABEL' lines atomically; returns the number of lines written."""
    count = 0
    with atomic_write(list_path, "w") as fh:
        for entry in entries:
            path, label = (entry.path, entry.label) if isinstance(entry, ListEntry) else entry
            fh.write(format_line(path, label))
            count += 1
    return count
