"""datakit.db's registry: a backend added in one module (tests/sqlite_backend.py) works through convert, mean,
inspect and the trainer's Data layer, with no edit anywhere else; the registry refuses duplicate names."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from datakit.convert import convert
from datakit.db import BACKENDS, Backend, backend_names, detect_backend, open_reader, register_backend
from datakit.db import PROGRESS_NAME, incomplete_path, unregister_backend
from datakit.errors import DatabaseError
from datakit.summary import inspect_db
from datakit.mean import compute_mean
from datakit.parallel import InlineExecutor

from tests import sqlite_backend
from tests.test_convert import make_images, opts, read_all, write_list
from tests.test_data_layers import build, step


@pytest.fixture
def sqlite():
    backend = sqlite_backend.register()
    yield backend
    unregister_backend(backend.name)


@pytest.fixture
def converted(tmp_path, sqlite):
    entries = make_images(tmp_path, 21, size=(12, 16))
    lst = write_list(tmp_path / "list.txt", entries)
    resize = dict(resize_height=12, resize_width=16)
    convert(tmp_path / "img", lst, tmp_path / "ref", opts(backend="lmdb", **resize))
    convert(tmp_path / "img", lst, tmp_path / "sq", opts(backend="sqlite", workers=2, commit_every=4, **resize))
    return tmp_path


def test_a_registered_backend_is_detected_and_holds_what_lmdb_holds(converted):
    assert detect_backend(converted / "sq") == "sqlite"
    assert "sqlite" in backend_names()
    assert read_all(converted / "sq") == read_all(converted / "ref")
    assert len(read_all(converted / "sq")) == 21


def test_mean_of_a_registered_backend(converted):
    ref = compute_mean(converted / "ref", workers=1)
    for kwargs in ({"workers": 1}, {"workers": 2}, {"executor": InlineExecutor()}):
        got = compute_mean(converted / "sq", **kwargs)
        assert got.count == ref.count == 21
        assert np.array_equal(got.mean, ref.mean)


def test_inspect_of_a_registered_backend(converted):
    ref, _ = inspect_db(converted / "ref")
    got, samples = inspect_db(converted / "sq", samples=4)
    assert got.backend == "sqlite"
    assert (got.count, got.shapes, got.labels, got.first_key, got.last_key) == \
        (ref.count, ref.shapes, ref.labels, ref.first_key, ref.last_key)
    assert len(samples) == 4 and samples[0].image.shape == (3, 12, 16)


def test_the_data_layer_reads_a_registered_backend(converted):
    text = ('name: "d" type: "Data" top: "data" top: "label" '
            'data_param {{ source: "{}" batch_size: 8 }}')
    ref_layer, ref_tops = build(text.format("ref"), base_dir=converted)
    layer, tops = build(text.format("sq"), base_dir=converted)
    try:
        for _ in range(4):  # past the end: the reader wraps, and seeks by position on a resumed batch
            want, got = step(ref_layer, ref_tops), step(layer, tops)
            assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])
    finally:
        layer.close()
        ref_layer.close()


def test_an_interrupted_conversion_resumes_on_a_registered_backend(converted):
    # a durable point at every batch: cut the finished database back to 10 records and resume it
    work = incomplete_path(converted / "again")
    shutil.copytree(converted / "sq", work)
    progress = json.loads((work / PROGRESS_NAME).read_text())
    skipped_before = [s for s in progress["skipped"] if s["index"] < 10]
    progress.update(status="incomplete", next_index=10, written=10 - len(skipped_before), skipped=skipped_before)
    (work / PROGRESS_NAME).write_text(json.dumps(progress))
    entries_list = converted / "list.txt"
    convert(converted / "img", entries_list, converted / "again",
            opts(backend="sqlite", resume=True, resize_height=12, resize_width=16))
    assert read_all(converted / "again") == read_all(converted / "ref")


def test_the_registry_refuses_a_second_backend_of_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register_backend(Backend("lmdb", lambda p: False, object, object))
    assert BACKENDS["lmdb"].caffe_enum == 1


def test_an_unknown_backend_names_the_registered_ones(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DatabaseError, match="unknown backend 'nope'.*lmdb, leveldb, hdf5"):
        open_reader(tmp_path / "x", "nope")
