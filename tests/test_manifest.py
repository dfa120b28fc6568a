"""Manifests and recipes: Caffe's exact subset, the bundled demo, fetching a recipe's CSV once."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from datakit.errors import DownloadError, ListError
from datakit.manifest import (Recipe, caffe_subset_indices, fetch_manifest,
                              load_recipe, mirror_url, open_manifest, partitions, read_manifest, select_rows,
                              sha256_file)
from datakit.mirror.demo_manifest import DEMO_LABELS, demo_manifest_csv

FLICKR_NAMES = ["Detailed", "Pastel", "Melancholy", "Noir", "HDR", "Vintage", "Long Exposure", "Horror", "Sunny",
                "Bright", "Hazy", "Bokeh", "Serene", "Texture", "Ethereal", "Macro", "Depth of Field",
                "Geometric Composition", "Minimal", "Romantic"]


@pytest.fixture(scope="module")
def flickr_csv(shared_data: Path) -> Path:
    return shared_data / "flickr_style" / "flickr_style.csv.gz"


@pytest.fixture(scope="module")
def flickr_rows(flickr_csv: Path):
    return read_manifest(flickr_csv)


@pytest.fixture(scope="module")
def flickr_records(flickr_csv: Path) -> list[list[str]]:
    with gzip.open(flickr_csv, "rt", newline="") as fh:
        return list(csv.reader(fh))[1:]


def _independent_subset(records: list[list[str]], seed: int, images: int, labels: int) -> list[list[str]]:
    """Caffe's assemble_data.py selection, recomputed here without datakit: csv + a fresh RandomState."""
    order = np.random.RandomState(seed).permutation(len(records))
    picked = [records[i] for i in order]
    if labels > 0:
        picked = [r for r in picked if int(r[3]) < labels]
    if 0 < images < len(picked):
        picked = picked[:images]
    return picked


def test_flickr_recipe_matches_the_shared_csv(flickr_csv: Path, flickr_rows, shared_data: Path) -> None:
    recipe = load_recipe("flickr_style")
    assert recipe.sha256 == sha256_file(flickr_csv)
    assert recipe.label_names == FLICKR_NAMES
    assert (shared_data / "flickr_style" / "style_names.txt").read_text().split("\n")[:20] == FLICKR_NAMES
    assert recipe.url.startswith("https://raw.githubusercontent.com/BVLC/caffe/")
    rows = flickr_rows
    assert len(rows) == 80_000
    assert sum(r.split == "train" for r in rows) == 64_000
    assert rows[0].id == "5159730964" and rows[0].label == 0
    assert rows[0].url == "http://farm2.staticflickr.com/1227/5159730964_124c1e63d8.jpg"


@pytest.mark.parametrize("seed,images,labels", [(0, -1, 0), (1701, 2000, 0), (831486, 2000, 0), (3, 500, 5),
                                                (42, 100000, 2)])
def test_subset_is_caffes(flickr_rows, flickr_records, seed: int, images: int, labels: int) -> None:
    ours = select_rows(flickr_rows, images=images, seed=seed, num_labels=labels)
    theirs = _independent_subset(flickr_records, seed, images, labels)
    assert [(r.id, r.url, r.label, r.split) for r in ours] == [(t[0], t[1], int(t[3]), t[4]) for t in theirs]


def test_caffe_readme_seed_split(flickr_rows) -> None:
    """Caffe's readme: seed 831486, 2000 images -> 1939 downloaded, 1557 train + 382 test.

    Only downloads that failed are missing from those counts, so the subset
    itself must hold at least that many of each split.
    """
    ours = select_rows(flickr_rows, images=2000, seed=831486)
    train = sum(r.split == "train" for r in ours)
    assert train >= 1557 and 2000 - train >= 382


def test_subset_indices_filter_after_permutation() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    got = caffe_subset_indices(10, labels, images=3, seed=5, num_labels=2)
    perm = np.random.RandomState(5).permutation(10)
    assert got.tolist() == [i for i in perm if labels[i] < 2][:3]


def test_demo_manifest_is_generated_and_pinned() -> None:
    recipe = load_recipe("demo")
    _, rows, path = open_manifest("demo")
    assert gzip.decompress(path.read_bytes()).decode() == demo_manifest_csv()
    assert sha256_file(path) == recipe.sha256
    assert recipe.label_names == DEMO_LABELS
    assert len(rows) == 3000 and {r.label for r in rows} == set(range(len(DEMO_LABELS)))
    assert {r.split for r in rows} == {"train", "test"}
    assert len({r.url.rsplit("/", 1)[-1] for r in rows}) == 3000
    assert all(r.url.startswith("http://farm") and ".staticflickr.com/" in r.url for r in rows)


def test_read_manifest_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "m.csv"
    bad.write_text(",image_url,label,_split\n1,http://a/1.jpg,0,train\n2,http://a/2.jpg,x,train\n")
    with pytest.raises(ListError, match=r"m.csv:3: label 'x' is not an integer"):
        read_manifest(bad)
    with pytest.raises(ListError, match=r"m.csv:1: no url column 'url'"):
        read_manifest(bad, url_column="url")
    bad.write_text("id,link,cls\n1,http://a/1.jpg,4\n")
    rows = read_manifest(bad, url_column="link", label_column="cls", split_column=None)
    assert rows[0].split == "train" and rows[0].label == 4 and rows[0].id == "1"


def test_mirror_url_keeps_the_path() -> None:
    assert (mirror_url("http://farm2.staticflickr.com/1227/5159730964_124c1e63d8.jpg", "http://127.0.0.1:8123")
            == "http://127.0.0.1:8123/1227/5159730964_124c1e63d8.jpg")
    recipe = load_recipe("flickr_style")
    rule = recipe.rewrites["flickr"][0]
    assert rule.apply("http://farm9.staticflickr.com/8368/8530766395_4229f47bf4.jpg") == \
        "https://live.staticflickr.com/8368/8530766395_4229f47bf4.jpg"


def test_partitions_cover_rows_in_order() -> None:
    parts = list(partitions(list(range(10)), 4))
    assert [p for p, _ in parts] == [0, 1, 2] and sum((list(r) for _, r in parts), []) == list(range(10))


class _Serve(BaseHTTPRequestHandler):
    payload = b""
    hits = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *a) -> None:
        pass


def test_fetch_manifest_caches_and_checks_sha256(tmp_path: Path) -> None:
    data = gzip.compress(b",image_url,page_url,label,_split\n1,http://x/1.jpg,p,0,train\n", mtime=0)
    _Serve.payload, _Serve.hits = data, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dir/flickr_style.csv.gz"
        recipe = Recipe(name="t", url=url, sha256=hashlib.sha256(data).hexdigest())
        path = fetch_manifest(recipe, tmp_path)
        assert path == tmp_path / "manifests" / "flickr_style.csv.gz" and path.read_bytes() == data
        assert fetch_manifest(recipe, tmp_path) == path and _Serve.hits == 1  # cached
        wrong = Recipe(name="t", url=url.replace("flickr_style", "other"), sha256="0" * 64)
        with pytest.raises(DownloadError, match="does not match"):
            fetch_manifest(wrong, tmp_path)
        assert not (tmp_path / "manifests" / "other.csv.gz").exists()
        assert not [p for p in (tmp_path / "manifests").iterdir() if p.name.startswith(".")]
    finally:
        server.shutdown()


def test_recipe_files_are_valid_json() -> None:
    root = Path(__file__).resolve().parents[1] / "manifests"
    for p in root.glob("*.json"):
        data = json.loads(p.read_text())
        assert load_recipe(p.stem).name == data["name"] == p.stem


@pytest.mark.parametrize("which", ["url_column", "label_column"])
def test_an_empty_url_or_label_column_is_one_clear_error(tmp_path, which) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,image_url,label\n0,http://h/a.jpg,1\n")
    what = which.split("_")[0]
    with pytest.raises(ListError, match=f"m.csv: a manifest needs a {what} column"):
        read_manifest(path, split_column=None, **{which: ""})


@pytest.mark.parametrize("given", ["nosuch.csv", "dir/nosuch.json", "data/flickr_style.csv.gz"])
def test_a_missing_manifest_file_is_named_as_a_file(given: str) -> None:
    """`--manifest nosuch.csv` said 'no manifest recipe named', as if a recipe had been asked for."""
    with pytest.raises(ListError, match=rf"^{re.escape(given)}: manifest file not found"):
        open_manifest(given)


def test_an_unknown_recipe_name_still_lists_the_recipes() -> None:
    with pytest.raises(Exception, match="no manifest recipe named 'flickr_styl'"):
        open_manifest("flickr_styl")
