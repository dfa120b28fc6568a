"""Dataset manifests: CSV files of (id, url, label, split) rows, and recipes that name them.

A *manifest* is the list of images a dataset is made of, as Caffe's Flickr
Style example ships it: a CSV with an unnamed index column, an image URL, a
label and a split. A *recipe* (``manifests/<name>.json``) says where a
published manifest lives, its sha256, its label names, which columns to read
and which URL rewrite rules apply, so that ``--manifest flickr_style`` is all
a user has to type.

The subset selection reproduces Caffe's ``assemble_data.py`` exactly:
``np.random.seed(seed)``; ``permutation(number of rows)`` over the rows in file
order; keep ``label < K`` when ``--labels K``; then the first N rows. The same
seed therefore gives the same images, in the same order, as Caffe.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator, Sequence

import numpy as np

from datakit.atomic import atomic_write, sha256_file
from datakit.errors import ConfigError, DownloadError, ListError
from datakit.imagelist import parse_label
from datakit.resources import bundled_dir

# The folder of bundled recipes (and the demo manifest) at the repository root.
RECIPES_DIR = bundled_dir("manifests")


@dataclass(frozen=True, slots=True)
class Row:
    """One manifest row: its position in the file, its id, URL, label and split."""

    position: int  # 0-based data row number in file order (the index Caffe permutes)
    id: str
    url: str
    label: int
    split: str


@dataclass(frozen=True)
class RewriteRule:
    """A regular-expression substitution applied to each URL (``re.sub(pattern, replace, url)``)."""

    pattern: str
    replace: str

    def apply(self, url: str) -> str:
        return re.sub(self.pattern, self.replace, url, count=1)


@dataclass
class Recipe:
    """Where a published manifest lives and how to read it."""

    name: str
    description: str = ""
    url: str | None = None          # where to download the CSV from (None: bundled `file`)
    file: str | None = None         # a CSV bundled beside the recipe (relative to manifests/)
    sha256: str | None = None
    label_names: list[str] = field(default_factory=list)
    id_column: int | str = 0
    url_column: str = "image_url"
    label_column: str = "label"
    split_column: str = "_split"
    rewrites: dict[str, list[RewriteRule]] = field(default_factory=dict)
    placeholder_sha1: list[str] = field(default_factory=list)

    @property
    def cache_name(self) -> str:
        return Path(urllib.parse.urlparse(self.url).path).name if self.url else f"{self.name}.csv"


def list_recipes() -> list[str]:
    """Names of the bundled recipes (``manifests/*.json``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json"))


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """Read a recipe by name (``manifests/NAME.json``) or from a JSON file path."""
    path = Path(name_or_path)
    if not path.suffix == ".json":
        path = RECIPES_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ConfigError(f"no manifest recipe named {str(name_or_path)!r} "
                          f"(bundled: {', '.join(list_recipes()) or 'none'}; or pass a CSV path)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: recipe is not valid JSON ({err.msg})") from None
    rewrites = {k: [RewriteRule(r["pattern"], r["replace"]) for r in rules]
                for k, rules in data.get("rewrites", {}).items()}
    known = {f for f in Recipe.__dataclass_fields__}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{path}: unknown recipe keys {sorted(unknown)} (known: {sorted(known)})")
    data = {k: v for k, v in data.items() if k != "rewrites"}
    return Recipe(rewrites=rewrites, **data)


def default_cache_dir() -> Path:
    """``$DATAKIT_CACHE`` or ``~/.cache/datakit``: where downloaded manifests are kept."""
    env = os.environ.get("DATAKIT_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "datakit"


def fetch_manifest(recipe: Recipe, cache_dir: str | os.PathLike | None = None, *,
                   url: str | None = None, timeout: float = 60.0) -> Path:
    """The local path of a recipe's CSV, downloading it once into the cache and checking its sha256.

    A bundled recipe (``file``) needs no download. A cached file whose checksum
    does not match is downloaded again; a download whose checksum does not
    match is refused (nothing is left under the cached name).
    """
    if recipe.file:
        path = RECIPES_DIR / recipe.file
        if not path.is_file():
            raise ConfigError(f"recipe {recipe.name!r}: bundled manifest {path} is missing")
        _check_sha(recipe, path)
        return path
    source = url or recipe.url
    if not source:
        raise ConfigError(f"recipe {recipe.name!r} names neither a url nor a bundled file")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / "manifests" / recipe.cache_name
    if target.is_file() and (not recipe.sha256 or sha256_file(target) == recipe.sha256):
        return target
    try:
        with urllib.request.urlopen(source, timeout=timeout) as resp:
            with atomic_write(target, "wb") as fh:
                h = hashlib.sha256()
                for block in iter(lambda: resp.read(1 << 16), b""):
                    h.update(block)
                    fh.write(block)
                if recipe.sha256 and h.hexdigest() != recipe.sha256:
                    raise DownloadError(f"{source}: sha256 {h.hexdigest()} does not match the recipe's "
                                        f"{recipe.sha256}; the file changed upstream or the download is "
                                        "corrupt (nothing was cached)")
    except OSError as err:
        raise DownloadError(f"{source}: cannot download manifest ({getattr(err, 'reason', err)}); "
                            f"download it yourself and pass --manifest PATH (or put it at {target})") from None
    return target


def _check_sha(recipe: Recipe, path: Path) -> None:
    if recipe.sha256 and sha256_file(path) != recipe.sha256:
        raise DownloadError(f"{path}: sha256 does not match recipe {recipe.name!r} ({recipe.sha256})")


def _open_text(path: Path) -> io.TextIOBase:
    """The manifest as text, gunzipped if need be; utf-8-sig, as spreadsheets save CSV with a leading BOM."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


#: a split names the list that assemble writes for it (``OUT/<split>.txt``), so it must be a plain file
#: name: no separators, no leading dot (``..``), nothing that resolves outside the output folder
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: splits whose list would overwrite another file written beside the lists (``labels.txt``: class names)
_RESERVED_SPLITS = frozenset({"labels"})


def _split_name(value: str, name: str, line: int) -> str:
    """``value`` checked as a split (empty: the default, train); a ListError naming ``name:line`` if unsafe."""
    if value and not _SPLIT_NAME.fullmatch(value):
        raise ListError(f"{name}:{line}: split {value!r} cannot name a list file (<split>.txt in the output "
                        f"folder): use letters, digits, '_', '-' or '.', such as train or test")
    if value.lower() in _RESERVED_SPLITS:
        raise ListError(f"{name}:{line}: split {value!r} would overwrite {value}.txt, the class names "
                        f"written beside the lists; rename the split")
    return value


def read_manifest(path: str | os.PathLike, *, url_column: str = "image_url", label_column: str = "label",
                  split_column: str | None = "_split", id_column: int | str = 0) -> list[Row]:
    """Read every row of a manifest CSV (plain or gzip) in file order.

    Errors name ``FILE:LINE`` (line 1 is the header). Labels must be integers
    in Caffe's int32 range 0..2^31-1 (imagelist.parse_label, shared with the
    image lists). With no split column every row belongs to 'train'; a split must be
    a plain file name (it names the list ``<split>.txt``), never a path.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise ListError(f"{name}: manifest not found")
    rows: list[Row] = []
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ListError(f"{name}: manifest is empty (expected a header line)")

            def column(col: int | str | None, what: str) -> int | None:
                if col is None or col == "":
                    return None
                if isinstance(col, int):
                    return col
                if col not in header:
                    raise ListError(f"{name}:1: no {what} column {col!r} in header {header} "
                                    f"(choose one with --{what}-column)")
                return header.index(col)

            def required(col: int | str | None, what: str) -> int:
                index = column(col, what)
                if index is None:
                    raise ListError(f"{name}: a manifest needs a {what} column (--{what}-column cannot be empty)")
                return index

            iu, il = required(url_column, "url"), required(label_column, "label")
            isp, iid = column(split_column, "split"), column(id_column, "id")
            for line, rec in enumerate(reader, start=2):
                if not rec:
                    continue
                if len(rec) != len(header):
                    raise ListError(f"{name}:{line}: {len(rec)} fields, the header has {len(header)}")
                label = parse_label(rec[il], f"{name}:{line}")
                rows.append(Row(len(rows), rec[iid] if iid is not None else str(len(rows)),
                                rec[iu].strip(), label,
                                _split_name(rec[isp].strip(), name, line) if isp is not None else "train"))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, csv.Error) as err:
        raise ListError(f"{name}: not a readable CSV manifest ({err})") from None
    return rows


def read_recipe_manifest(recipe: Recipe, path: str | os.PathLike) -> list[Row]:
    """Read `path` with the columns the recipe names."""
    return read_manifest(path, url_column=recipe.url_column, label_column=recipe.label_column,
                         split_column=recipe.split_column, id_column=recipe.id_column)


def open_manifest(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  **columns: str | None) -> tuple[Recipe, list[Row], Path]:
    """Read a manifest given as a CSV path, a recipe name or a recipe .json; `columns` override the recipe's.

    Returns the recipe (a default one for a bare CSV), every row, and the CSV's path.
    """
    target = Path(name_or_path)
    looks_like_a_file = len(target.parts) > 1 or target.suffix.lower() in (".csv", ".gz", ".tsv", ".json")
    if looks_like_a_file and not target.exists():  # a mistyped path, not an unknown recipe name
        raise ListError(f"{target}: manifest file not found (a recipe is named without a suffix: "
                        f"{', '.join(list_recipes())})")
    if target.is_file() and target.suffix != ".json":
        recipe, path = recipe_for_file(target) or Recipe(name=target.name.split(".")[0]), target
    else:
        recipe = load_recipe(name_or_path)
        path = fetch_manifest(recipe, cache_dir)
    for attr in ("url_column", "label_column", "split_column", "id_column"):
        value = columns.get(attr)
        if value is not None:
            setattr(recipe, attr, value)
    return recipe, read_recipe_manifest(recipe, path), path


def recipe_for_file(path: str | os.PathLike) -> Recipe | None:
    """The bundled recipe whose sha256 this file has (a local copy of a known manifest), else None.

    So that ``--manifest caffe/examples/finetune_flickr_style/flickr_style.csv.gz``
    gets Flickr Style's label names, placeholder hash and ``--rewrite flickr``.
    """
    digest = None
    for name in list_recipes():
        recipe = load_recipe(name)
        if recipe.sha256:
            digest = digest or sha256_file(path)
            if digest == recipe.sha256:
                return recipe
    return None


def caffe_subset_indices(num_rows: int, labels: Sequence[int] | np.ndarray, *, images: int = -1,
                         seed: int = 0, num_labels: int = 0) -> np.ndarray:
    """Row positions Caffe's assemble_data.py keeps, in its order.

    Seeds NumPy's global legacy generator exactly as Caffe does (and so
    changes its state, as Caffe's script does): permutation first, label
    filter second, first `images` rows last.
    """
    np.random.seed(seed)
    order = np.random.permutation(num_rows)
    if num_labels > 0:
        lab = np.asarray(labels)
        order = order[lab[order] < num_labels]
    if 0 < images < order.shape[0]:
        order = order[:images]
    return order


def select_rows(rows: Sequence[Row], *, images: int = -1, seed: int = 0, num_labels: int = 0) -> list[Row]:
    """The Caffe-identical subset of `rows` (see `caffe_subset_indices`)."""
    order = caffe_subset_indices(len(rows), [r.label for r in rows], images=images, seed=seed,
                                 num_labels=num_labels)
    return [rows[i] for i in order]


def apply_rewrites(url: str, rules: Sequence[RewriteRule]) -> str:
    for rule in rules:
        url = rule.apply(url)
    return url


def mirror_url(url: str, base: str) -> str:
    """Replace the scheme and host of `url` with `base`'s, keeping path and query."""
    b = urllib.parse.urlsplit(base)
    if b.scheme not in ("http", "https") or not b.netloc:
        raise ConfigError(f"--mirror {base!r}: expected http://HOST:PORT")
    u = urllib.parse.urlsplit(url)
    prefix = b.path.rstrip("/")
    return urllib.parse.urlunsplit((b.scheme, b.netloc, prefix + u.path, u.query, ""))


def partitions(rows: Sequence[Row], size: int) -> Iterator[tuple[int, Sequence[Row]]]:
    """Consecutive slices of `size` rows: the unit of work a distributed runner would hand out."""
    size = max(1, int(size))
    for i, start in enumerate(range(0, len(rows), size)):
        yield i, rows[start:start + size]
