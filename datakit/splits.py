"""Derived datasets for transfer studies: class halves and reduced-volume lists.

Three ways to derive a dataset from a Caffe image list, those of Yosinski et al., "How transferable
are features in deep neural networks?" (NIPS 2014):

- **random halves** (`split_random_halves`): the K classes are shuffled with NumPy's legacy
  Mersenne Twister seeded by the *sequence* ``[seed]`` (the authors' script passed its argparse
  list straight to ``numpy.random.seed``, which seeds by array, not by integer); half A is the first
  ``K // 2`` classes of ``RandomState([seed]).permutation(K)``, half B the rest. With K = 1000 this
  is what their ``random.choice(arange(1000), 500, replace=False)`` draws, so seeds 0..3 give their
  half0A..half3B lists byte for byte. With an odd K, A has the smaller half.
- **halves from index files** (`split_halves_from_files`): the natural / man-made split, one class
  index per line; the two files must be disjoint and together name every class.
- **reduced volume** (`reduce_per_class`): the first N lines of each class, labels kept.

In a half, lines keep their input order and labels are renumbered 0..K'-1 by rank of the original
label; ``idxmap.txt`` is the table ``# Orig_idx new_idx``. A half is written as ``OUT/A/files.txt``
+ ``OUT/A/idxmap.txt`` (and B); a reduced list as ``OUT/files.txt``; each call also writes
``OUT/split.json`` (source list and sha256, mode, seed, classes kept, counts). Since the class
groups depend only on (K, seed) or on the index files, a train list and a valid list split with the
same arguments get the same groups; `--num-classes` fixes K when a list lacks its last classes.

Lists are streamed twice (a pass to learn the classes, a pass to write), never held in memory, and
every output appears atomically. Bad input raises ListError naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from datakit.atomic import atomic_write, write_text_atomic
from datakit.errors import ConfigError, ListError, MissingListFile
from datakit.imagelist import format_line, iter_list

MANIFEST_NAME = "split.json"


@dataclass
class SplitResult:
    """What a split wrote: mode, the class groups ({"A": [...], "B": [...]} or {"kept": [...]}), counts."""

    out_dir: str
    mode: str
    source: str
    source_sha256: str
    num_classes: int
    groups: dict[str, list[int]]
    counts: dict[str, int]
    seed: int | None = None
    per_class: int | None = None
    index_files: list[str] = field(default_factory=list)

    def manifest(self) -> dict:
        return {"source": self.source, "source_sha256": self.source_sha256, "mode": self.mode,
                "seed": self.seed, "per_class": self.per_class, "index_files": self.index_files,
                "num_classes": self.num_classes, "classes": self.groups, "counts": self.counts}


@dataclass
class _Survey:
    """The first pass over a list: the first line of each label and the line count."""

    first_line: dict[int, int]
    lines: int
    sha256: str


def _survey(list_path: str | os.PathLike, num_classes: int | None) -> _Survey:
    """Check the labels form 0..K-1 with no gap (below `num_classes` when given) and hash the file."""
    name = str(list_path)
    first_line: dict[int, int] = {}
    lines = 0
    for entry in iter_list(list_path):
        lines += 1
        first_line.setdefault(entry.label, entry.line)
        if num_classes is not None and entry.label >= num_classes:
            raise ListError(f"{name}:{entry.line}: label {entry.label} is out of range for "
                            f"--num-classes {num_classes}")
    if not lines:
        raise ListError(f"{name}: the list has no lines")
    present = sorted(first_line)
    expected = 0
    for label in present:
        if label != expected:
            missing = f"{expected}" if label == expected + 1 else f"{expected}..{label - 1}"
            raise ListError(f"{name}:{first_line[label]}: label {label} leaves a gap: no line has label "
                            f"{missing} (a split needs labels 0..K-1)")
        expected += 1
    digest = hashlib.sha256()
    with open(list_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return _Survey(first_line, lines, digest.hexdigest())


def random_halves(num_classes: int, seed: int) -> tuple[list[int], list[int]]:
    """(A, B), each sorted: A = the first K // 2 classes of RandomState([seed]).permutation(K)."""
    import numpy as np

    if num_classes < 2:
        raise ConfigError(f"a split into halves needs at least 2 classes, the list has {num_classes}")
    if not 0 <= int(seed) < 2 ** 32:  # NumPy's legacy seeding takes 32-bit words only
        raise ConfigError(f"--seed {seed}: a seed must be between 0 and 2**32 - 1 (the paper's are 0..3)")
    order = np.random.RandomState([int(seed)]).permutation(num_classes)
    half_a = sorted(int(c) for c in order[:num_classes // 2])
    chosen = set(half_a)
    return half_a, [c for c in range(num_classes) if c not in chosen]


def read_index_file(path: str | os.PathLike) -> list[tuple[int, int]]:
    """(class index, 1-based line) of every non-blank line; ListError for a non-integer or repeated one."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise MissingListFile(f"{name}: index file not found") from None
    except UnicodeDecodeError as err:
        raise ListError(f"{name}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    seen: dict[int, int] = {}
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            index = int(line.strip())
        except ValueError:
            raise ListError(f"{name}:{number}: expected a class index, got {line.strip()!r}") from None
        if index < 0:
            raise ListError(f"{name}:{number}: class index {index} is negative")
        if index in seen:
            raise ListError(f"{name}:{number}: class {index} repeats line {seen[index]}")
        seen[index] = number
        out.append((index, number))
    return out


def _write_half(out_dir: Path, classes: list[int]) -> Path:
    """Write OUT/<half>/idxmap.txt; returns the half's folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = "# Orig_idx new_idx\n" + "".join(f"{old} {new}\n" for new, old in enumerate(classes))
    write_text_atomic(out_dir / "idxmap.txt", table)
    return out_dir


def _write_halves(list_path: str | os.PathLike, out: Path, groups: dict[str, list[int]]) -> dict[str, int]:
    """One pass over the list writing OUT/A/files.txt and OUT/B/files.txt; returns line counts."""
    new_label: dict[int, tuple[str, int]] = {}
    for half, classes in groups.items():
        for rank, old in enumerate(classes):
            new_label[old] = (half, rank)
    counts = dict.fromkeys(groups, 0)
    with ExitStack() as stack:
        files = {half: stack.enter_context(atomic_write(_write_half(out / half, classes) / "files.txt", "w"))
                 for half, classes in groups.items()}
        for entry in iter_list(list_path):
            target = new_label.get(entry.label)
            if target is not None:
                files[target[0]].write(format_line(entry.path, target[1]))
                counts[target[0]] += 1
    return counts


def _finish(result: SplitResult) -> SplitResult:
    write_text_atomic(Path(result.out_dir) / MANIFEST_NAME, json.dumps(result.manifest(), indent=1) + "\n")
    return result


def split_random_halves(list_path: str | os.PathLike, out: str | os.PathLike, seed: int,
                        num_classes: int | None = None) -> SplitResult:
    """The paper's random halves of `list_path` (see the module docstring) into OUT/A and OUT/B."""
    survey = _survey(list_path, num_classes)
    k = num_classes if num_classes is not None else len(survey.first_line)
    half_a, half_b = random_halves(k, seed)
    groups = {"A": half_a, "B": half_b}
    counts = _write_halves(list_path, Path(out), groups)
    return _finish(SplitResult(str(out), "random-halves", str(list_path), survey.sha256, k, groups, counts,
                               seed=seed))


def split_halves_from_files(list_path: str | os.PathLike, out: str | os.PathLike,
                            index_a: str | os.PathLike, index_b: str | os.PathLike,
                            num_classes: int | None = None) -> SplitResult:
    """Halves named by two class index files (e.g. natural / man-made) into OUT/A and OUT/B.

    The files must be disjoint, name only classes that have images, and together name every class.
    """
    survey = _survey(list_path, num_classes)
    k = num_classes if num_classes is not None else len(survey.first_line)
    lines_a, lines_b = read_index_file(index_a), read_index_file(index_b)
    where_a = dict(lines_a)
    for path, lines in ((index_a, lines_a), (index_b, lines_b)):
        for index, number in lines:
            if index >= k:
                raise ListError(f"{path}:{number}: class {index} has no images in {list_path} "
                                f"(its classes are 0..{k - 1})")
            if num_classes is not None and index not in survey.first_line:
                raise ListError(f"{path}:{number}: class {index} has no images in {list_path}")
    for index, number in lines_b:
        if index in where_a:
            raise ListError(f"{index_b}:{number}: class {index} is also in {index_a} (line {where_a[index]}); "
                            "the halves must not overlap")
    named = set(where_a) | {i for i, _ in lines_b}
    missing = [c for c in range(k) if c not in named]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise ListError(f"{index_a}, {index_b}: {len(missing)} classes of {list_path} are in neither "
                        f"index file: {shown}")
    groups = {"A": sorted(where_a), "B": sorted(i for i, _ in lines_b)}
    counts = _write_halves(list_path, Path(out), groups)
    return _finish(SplitResult(str(out), "halves-from-files", str(list_path), survey.sha256, k, groups,
                               counts, index_files=[str(index_a), str(index_b)]))


def reduce_per_class(list_path: str | os.PathLike, out: str | os.PathLike, per_class: int,
                     num_classes: int | None = None) -> SplitResult:
    """The first `per_class` lines of each class, in input order, labels kept, into OUT/files.txt."""
    if per_class < 1:
        raise ConfigError(f"--per-class must be at least 1, got {per_class}")
    survey = _survey(list_path, num_classes)
    k = num_classes if num_classes is not None else len(survey.first_line)
    seen = [0] * k
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with atomic_write(out / "files.txt", "w") as fh:
        for entry in iter_list(list_path):
            if seen[entry.label] < per_class:
                seen[entry.label] += 1
                fh.write(format_line(entry.path, entry.label))
                written += 1
    short = [c for c in range(k) if seen[c] < per_class]
    counts = {"kept": written, "classes_with_fewer": len(short)}
    return _finish(SplitResult(str(out), "per-class", str(list_path), survey.sha256, k,
                               {"kept": list(range(k))}, counts, per_class=per_class))


def split_list(list_path: str | os.PathLike, out: str | os.PathLike, *, halves: Sequence[str] | None = None,
               seed: int = 0, per_class: int | None = None, num_classes: int | None = None) -> SplitResult:
    """The CLI's entry: `halves` = ["random"] or [FILE_A, FILE_B]; or `per_class` = N."""
    if per_class is not None:
        if halves:
            raise ConfigError("--per-class and --halves are different modes; give one")
        return reduce_per_class(list_path, out, per_class, num_classes)
    if not halves or list(halves) == ["random"]:
        return split_random_halves(list_path, out, seed, num_classes)
    if len(halves) == 2:
        return split_halves_from_files(list_path, out, halves[0], halves[1], num_classes)
    raise ConfigError("--halves takes 'random' or two class index files FILE_A FILE_B")
