"""The board's grid, database and model cards (classify), through aiohttp's test client."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from datakit.formats.datum import encode_datum
from datakit.db.lmdb_backend import LmdbWriter
from datakit.formats import caffe_pb2

from trainer.board.grids import MISSING, grid_card, load_grid_module
from trainer.board.server import make_app


# ------------------------------------------------------------------------------------- grids

@dataclass
class FakeStatus:
    """A NetStatus as trainer.grid's contract describes it."""

    net: str
    family: str
    n: int | None
    split: str | None
    state: str
    iteration: int
    best_accuracy: float | None
    score: float | None


class FakeGrid:
    """An object shaped like the trainer.grid module: is_grid and grid_status."""

    def __init__(self, statuses: list[FakeStatus]) -> None:
        self.statuses = statuses
        self.asked: list[Path] = []

    def is_grid(self, path) -> bool:
        return (Path(path) / "grid.json").is_file()

    def grid_status(self, grid_dir) -> list[FakeStatus]:
        self.asked.append(Path(grid_dir))
        return list(self.statuses)


def _statuses() -> list[FakeStatus]:
    return [FakeStatus("baseA", "base", None, "A", "done", 1000, 0.62, 0.60),
            FakeStatus("baseB", "base", None, "B", "done", 1000, 0.64, 0.62),
            FakeStatus("BnB1", "BnB", 1, "B", "done", 1000, 0.63, 0.62),
            FakeStatus("BnB2", "BnB", 2, "B", "running", 400, 0.40, None),
            FakeStatus("AnB1", "AnB", 1, "B", "done", 1000, 0.61, 0.61),
            FakeStatus("AnB2", "AnB", 2, "B", "waiting", 0, None, None),
            FakeStatus("AnB+1", "AnB+", 1, "B", "failed", 10, None, None)]


def _series(svg: str) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for m in re.finditer(r'data-series="([^"]*)" data-n="\d+" points="([^"]*)"', svg):
        out[m.group(1)] = [tuple(map(float, p.split(","))) for p in m.group(2).split()]
    return out


def _grid_dir(tmp_path: Path) -> Path:
    g = tmp_path / "grids" / "transfer"
    g.mkdir(parents=True)
    (g / "grid.json").write_text(json.dumps({"nets": []}))
    return g


async def test_grid_card_shows_statuses_and_the_figure(tmp_path, aiohttp_client):
    g = _grid_dir(tmp_path)
    fake = FakeGrid(_statuses())
    client = await aiohttp_client(make_app(tmp_path, grid=fake))
    overview = await (await client.get("/api/overview")).json()
    assert overview["grids"] == ["grids/transfer"] and overview["grid_support"] is True
    card = await (await client.get("/api/grid", params={"path": "grids/transfer"})).json()
    assert card["error"] is None and fake.asked == [g.resolve()]
    assert [r["net"] for r in card["rows"]] == [s.net for s in _statuses()]
    assert card["rows"][3] == {"net": "BnB2", "family": "BnB", "n": 2, "split": "B", "state": "running",
                               "iteration": 400, "best_accuracy": 0.40, "score": None}
    assert card["counts"] == {"done": 4, "running": 1, "waiting": 1, "failed": 1}
    series = _series(card["figure"])
    # BnB has two values (n=1 score, n=2 best accuracy so far), AnB one, the base a level; AnB+ none yet
    assert len(series["BnB"]) == 2 and len(series["AnB"]) == 1 and "AnB+" not in series
    assert len(series["base (mean of 2)"]) == 2
    assert series["base (mean of 2)"][0][1] == series["base (mean of 2)"][1][1]
    assert card["figure"].count('fill="#fff" stroke') == 1   # the running net is an open circle


async def test_grid_figure_fills_in_as_nets_finish(tmp_path, aiohttp_client):
    _grid_dir(tmp_path)
    fake = FakeGrid(_statuses())
    client = await aiohttp_client(make_app(tmp_path, grid=fake))
    before = _series((await (await client.get("/api/grid", params={"path": "grids/transfer"})).json())["figure"])
    fake.statuses[5] = FakeStatus("AnB2", "AnB", 2, "B", "done", 1000, 0.55, 0.54)
    after = _series((await (await client.get("/api/grid", params={"path": "grids/transfer"})).json())["figure"])
    assert len(before["AnB"]) == 1 and len(after["AnB"]) == 2


def test_grid_card_errors_are_on_the_card(tmp_path):
    g = _grid_dir(tmp_path)

    class Broken(FakeGrid):
        def grid_status(self, grid_dir):
            raise ValueError("grid.json: line 3: expected a list of nets")

    card = grid_card(g, "grids/transfer", Broken([]))
    assert card["error"] == "grids/transfer: grid.json: line 3: expected a list of nets" and card["rows"] == []


def test_grid_card_says_when_trainer_grid_is_missing(tmp_path, monkeypatch):
    g = _grid_dir(tmp_path)
    monkeypatch.setitem(sys.modules, "trainer.grid", None)   # import trainer.grid raises ImportError
    assert load_grid_module() is None
    card = grid_card(g, "grids/transfer")
    assert card["error"] == MISSING and "trainer.grid" in card["error"]


@pytest.mark.skipif(importlib.util.find_spec("trainer.grid") is None,
                    reason="trainer.grid is not there yet (experiment grids are built on another branch)")
async def test_grid_card_uses_the_real_trainer_grid(tmp_path, aiohttp_client):
    _grid_dir(tmp_path)
    client = await aiohttp_client(make_app(tmp_path))
    overview = await (await client.get("/api/overview")).json()
    assert overview["grid_support"] is True
    card = await (await client.get("/api/grid", params={"path": "grids/transfer"})).json()
    assert card["error"] != MISSING


# ------------------------------------------------------------------------------------- databases

def _lmdb(path: Path, labels: list[int]) -> None:
    rng = np.random.default_rng(0)
    writer = LmdbWriter(path)
    writer.write([(f"{i:08d}_img{i}.png".encode(), encode_datum(rng.integers(0, 256, (3, 12, 10), dtype=np.uint8), lab))
                  for i, lab in enumerate(labels)])
    writer.close()


async def test_database_card_summary_histogram_and_sheet(tmp_path, aiohttp_client):
    _lmdb(tmp_path / "data" / "train_lmdb", [0, 1, 1, 2, 2, 2, 4])
    client = await aiohttp_client(make_app(tmp_path))
    overview = await (await client.get("/api/overview")).json()
    assert overview["databases"] == ["data/train_lmdb"]
    card = await (await client.get("/api/db", params={"path": "data/train_lmdb"})).json()
    assert card["error"] is None
    assert card["lines"][0] == "data/train_lmdb: lmdb, 7 records (7 raw)"
    assert any("missing [3]" in line for line in card["lines"])
    bars = dict(re.findall(r'class="bar" data-label="(\d+)" data-value="([\d.]+)"', card["histogram"]))
    assert bars == {"0": "1", "1": "2", "2": "3", "4": "1"}
    r = await client.get("/api/db/sheet", params={"path": "data/train_lmdb"})
    assert r.status == 200 and r.headers["Content-Type"] == "image/png"
    sheet = cv2.imdecode(np.frombuffer(await r.read(), np.uint8), cv2.IMREAD_COLOR)
    assert sheet.shape == (3 * 82 + 2, 3 * 82 + 2, 3)   # 7 samples: 3 columns, 3 rows of 80-pixel cells
    # the database is rewritten: the card follows
    _lmdb(tmp_path / "data" / "train_lmdb", [0] * 9)
    await client.get("/api/overview")
    card = await (await client.get("/api/db", params={"path": "data/train_lmdb"})).json()
    assert card["lines"][0].startswith("data/train_lmdb: lmdb, 9 records")


async def test_a_sharded_database_is_one_card(tmp_path, aiohttp_client):
    """`datakit convert --cluster` writes DB/shards.json and DB/shard-NNNNN/: the board shows one
    database (inspect's summary of all its records), not one card per shard."""
    from datakit.convert import ConvertOptions
    from datakit.convert.sharded import convert_sharded
    from datakit.parallel import InlineExecutor
    from tests.test_convert import make_images, write_list
    entries = make_images(tmp_path / "src", 10, size=(12, 16))
    listing = write_list(tmp_path / "src" / "list.txt", entries)
    convert_sharded(tmp_path / "src" / "img", listing, tmp_path / "data" / "train_db",
                    ConvertOptions(workers=1, progress=False, resize_height=12, resize_width=16),
                    InlineExecutor(), partition_size=4, warn=lambda m: None)
    assert len(list((tmp_path / "data" / "train_db").glob("shard-*"))) == 3
    client = await aiohttp_client(make_app(tmp_path))
    overview = await (await client.get("/api/overview")).json()
    assert overview["databases"] == ["data/train_db"]
    card = await (await client.get("/api/db", params={"path": "data/train_db"})).json()
    assert card["error"] is None and card["lines"][0].startswith("data/train_db: sharded, 10 records")
    r = await client.get("/api/db/sheet", params={"path": "data/train_db"})
    assert r.status == 200 and r.headers["Content-Type"] == "image/png"


async def test_half_written_and_corrupt_databases_are_errors_on_their_cards(tmp_path, aiohttp_client):
    part = tmp_path / "val_lmdb.incomplete"
    _lmdb(part, [0, 1])
    (part / "datakit-convert.json").write_text(json.dumps({"status": "running", "written": 2, "listed": 10}))
    bad = tmp_path / "bad_lmdb"
    bad.mkdir()
    (bad / "data.mdb").write_bytes(b"\0garbage" * 100)
    client = await aiohttp_client(make_app(tmp_path))
    overview = await (await client.get("/api/overview")).json()
    assert overview["databases"] == ["bad_lmdb", "val_lmdb.incomplete"]
    card = await (await client.get("/api/db", params={"path": "val_lmdb.incomplete"})).json()
    assert "conversion has not finished (2 records written)" in card["error"]
    assert str(tmp_path) not in card["error"]
    card = await (await client.get("/api/db", params={"path": "bad_lmdb"})).json()
    assert card["error"] and card["lines"] == []
    assert (await client.get("/api/db/sheet", params={"path": "bad_lmdb"})).status == 404
    assert (await client.get("/api/db", params={"path": "nothere"})).status == 404
    assert (await client.get("/api/overview")).status == 200


# ------------------------------------------------------------------------------------- models

DEPLOY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 7 weight_filler { type: "gaussian" std: 0.002 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
NAMES = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]


@pytest.fixture
def model(tmp_path) -> Path:
    from trainer.net import Net
    from trainer.weights import save_weights

    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    (folder / "deploy.prototxt").write_text(DEPLOY)
    net = Net(text_format.Parse(DEPLOY, caffe_pb2.NetParameter()), caffe_pb2.TEST, seed=3)
    save_weights(net, folder / "tiny_iter_100.caffemodel")
    (folder / "labels.txt").write_text("\n".join(NAMES) + "\n")
    return folder


def _png(seed: int = 1) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


async def test_classify_an_uploaded_image_as_trainer_classify_does(tmp_path, aiohttp_client, model):
    from datakit.formats.prototxt import read_net
    from trainer.classify import Classifier
    from trainer.net import Net
    from trainer.weights import load_weights

    client = await aiohttp_client(make_app(tmp_path))
    overview = await (await client.get("/api/overview")).json()
    assert overview["models"] == ["models/tiny"]
    info = await (await client.get("/api/model", params={"path": "models/tiny"})).json()
    assert info["deploy"] == "models/tiny/deploy.prototxt" and info["labels"] == "models/tiny/labels.txt"
    assert info["weights"] == ["models/tiny/tiny_iter_100.caffemodel"] and info["mean"] is None

    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = await client.post("/api/classify", params={"path": "models/tiny"}, data=_png(),
                          headers={"Content-Type": "image/png"})
    assert r.status == 200, await r.text()
    top = (await r.json())["top"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before   # nothing written

    (tmp_path / "photo.png").write_bytes(_png())
    net = Net(read_net(model / "deploy.prototxt"), caffe_pb2.TEST)
    load_weights(net, model / "tiny_iter_100.caffemodel")
    [expected] = Classifier(net).classify_files([tmp_path / "photo.png"], NAMES, top_k=5)
    assert [(t["class"], t["name"]) for t in top] == [(i, n) for i, _, n in expected.top]
    assert [t["prob"] for t in top] == pytest.approx([p for _, p, _ in expected.top], rel=1e-5)
    assert [t["rank"] for t in top] == [1, 2, 3, 4, 5]


async def test_classify_refuses_bad_uploads(tmp_path, aiohttp_client, model):
    client = await aiohttp_client(make_app(tmp_path, max_upload=50_000))
    r = await client.post("/api/classify", params={"path": "models/tiny"}, data=b"not an image at all")
    assert r.status == 422 and "cannot be decoded as an image" in (await r.json())["error"]
    r = await client.post("/api/classify", params={"path": "models/tiny"}, data=b"\x89PNG" + b"\0" * 60_000)
    assert r.status == 413
    r = await client.post("/api/classify", params={"path": "models/tiny"}, data=b"")
    assert r.status == 400
    r = await client.post("/api/classify", params={"path": "models/tiny"}, data=_png(),
                          headers={"Origin": "http://attacker.example"})
    assert r.status == 403
    r = await client.post("/api/classify", params={"path": "models/tiny", "weights": "../x.caffemodel"}, data=_png())
    assert r.status == 403
    r = await client.post("/api/classify", params={"path": "nothere"}, data=_png())
    assert r.status == 404


async def test_classify_with_weights_that_miss_a_layer_says_so(tmp_path, aiohttp_client, model):
    from trainer.net import Net
    from trainer.weights import save_weights

    other = DEPLOY.replace('name: "fc"', 'name: "fc_renamed"')
    (model / "tiny_iter_100.caffemodel").unlink()
    save_weights(Net(text_format.Parse(other, caffe_pb2.NetParameter()), caffe_pb2.TEST), model / "renamed.caffemodel")
    client = await aiohttp_client(make_app(tmp_path))
    r = await client.post("/api/classify", params={"path": "models/tiny"}, data=_png())
    assert r.status == 422 and "has no weights for layer(s) fc" in (await r.json())["error"]


async def test_leveldb_and_hdf5_databases_are_found_and_inspected(tmp_path, aiohttp_client):
    from datakit.db.hdf5_backend import HDF5Writer
    from datakit.db.leveldb_backend import LevelDBWriter

    rng = np.random.default_rng(1)
    writer = LevelDBWriter(tmp_path / "ldb")
    writer.write([(f"{i:08d}".encode(), encode_datum(rng.integers(0, 256, (1, 6, 6), dtype=np.uint8), i % 2))
                  for i in range(5)])
    writer.close()
    h5 = HDF5Writer(tmp_path / "sets" / "train_h5", chunk=4)
    h5.write([(rng.integers(0, 256, (3, 5, 5)).astype(np.uint8), i % 3) for i in range(6)])
    h5.finish(tmp_path / "sets" / "train_h5")
    h5.close()
    client = await aiohttp_client(make_app(tmp_path))
    overview = await (await client.get("/api/overview")).json()
    assert overview["databases"] == ["ldb", "sets/train_h5"]
    card = await (await client.get("/api/db", params={"path": "ldb"})).json()
    assert card["lines"][0] == "ldb: leveldb, 5 records (5 raw)" and card["has_sheet"]
    card = await (await client.get("/api/db", params={"path": "sets/train_h5"})).json()
    assert card["lines"][0] == "sets/train_h5: hdf5, 6 records (6 float)"
    bars = dict(re.findall(r'class="bar" data-label="(\d+)" data-value="([\d.]+)"', card["histogram"]))
    assert bars == {"0": "2", "1": "2", "2": "2"}
    assert (await client.get("/api/db/sheet", params={"path": "sets/train_h5"})).status == 200


async def test_databases_reading_files_outside_dir_are_refused(tmp_path, aiohttp_client):
    from datakit.db.hdf5_backend import HDF5Writer

    root = tmp_path / "board"
    h5 = HDF5Writer(tmp_path / "elsewhere", chunk=4)
    h5.write([(np.zeros((1, 2, 2), np.uint8), 0)])
    h5.finish(tmp_path / "elsewhere")
    h5.close()
    (root / "h5").mkdir(parents=True)
    (root / "h5" / "list.txt").write_text(str(tmp_path / "elsewhere" / "data_00000.h5") + "\n")
    (root / "h5" / "x.h5").write_bytes(b"")
    _lmdb(tmp_path / "secret_lmdb", [0])
    (root / "linked_lmdb").mkdir()
    (root / "linked_lmdb" / "data.mdb").symlink_to(tmp_path / "secret_lmdb" / "data.mdb")
    client = await aiohttp_client(make_app(root))
    assert (await (await client.get("/api/overview")).json())["databases"] == ["h5", "linked_lmdb"]
    for name, bad in [("h5", "data_00000.h5"), ("linked_lmdb", "data.mdb")]:
        card = await (await client.get("/api/db", params={"path": name})).json()
        assert card["error"] == f"{name}: reads files outside the board's folder ({bad}); not shown", card
        assert (await client.get("/api/db/sheet", params={"path": name})).status == 404
