"""Files that should be text but are not (random bytes, an HDF5 file given as a list) are one clear line."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from google.protobuf import text_format

from datakit.errors import DatakitError, ListError

NET = '''
layer { name: "data" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param { source: "%s" batch_size: 2 } }
'''


def random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return path


def h5_data_file(path: Path) -> Path:
    with h5py.File(path, "w") as h5:
        h5["data"] = np.zeros((4, 1, 2, 2), np.float32)
        h5["label"] = np.zeros(4, np.float32)
    return path


def test_inspect_of_random_bytes_named_txt_is_one_line(tmp_path, cli):
    path = random_bytes(tmp_path / "rand.txt")
    res = cli("datakit", "inspect", str(path))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith(f"datakit: error: {path}: not a text file listing .h5 files, one per line (")


def test_an_hdf5_data_file_as_the_list_says_so(tmp_path):
    from datakit.db.hdf5_backend import read_hdf5_list
    path = h5_data_file(tmp_path / "train.h5")
    with pytest.raises(DatakitError) as err:
        read_hdf5_list(path)
    assert str(err.value) == (f"{path}: source must be a text file listing .h5 files, one per line; "
                              f"{path} is an HDF5 file itself")


def test_hdf5data_layer_with_an_h5_source_is_a_datakit_error(tmp_path):
    from datakit.formats import caffe_pb2
    from trainer.net import Net
    h5_data_file(tmp_path / "train.h5")
    param = text_format.Parse(NET % "train.h5", caffe_pb2.NetParameter())
    with pytest.raises(DatakitError, match="source must be a text file listing .h5 files, one per line; "
                                           ".*train.h5 is an HDF5 file itself"):
        Net(param, caffe_pb2.TRAIN, base_dir=str(tmp_path))


def test_hdf5_list_with_a_bom_is_read(tmp_path):
    from datakit.db.hdf5_backend import read_hdf5_list
    data = h5_data_file(tmp_path / "train.h5")
    (tmp_path / "list.txt").write_text("\ufefftrain.h5\n", encoding="utf-8")
    assert read_hdf5_list(tmp_path / "list.txt") == [data]


def test_a_non_utf8_class_index_file_is_one_line(tmp_path):
    from datakit.splits import read_index_file
    path = random_bytes(tmp_path / "classes.txt")
    with pytest.raises(ListError, match=f"{path}: not a UTF-8 text file"):
        read_index_file(path)


def test_a_non_utf8_window_file_is_one_line(tmp_path):
    from datakit.errors import FormatError
    from trainer.layers.data_window import parse_window_file
    path = random_bytes(tmp_path / "windows.txt")
    with pytest.raises(FormatError, match=f"{path}: not a UTF-8 text window file"):
        parse_window_file(path, str(tmp_path))


def test_a_non_utf8_labels_file_is_one_line_and_a_bom_is_dropped(tmp_path):
    from trainer.classify import read_labels
    path = random_bytes(tmp_path / "synset_words.txt")
    with pytest.raises(DatakitError, match=f"{path}: not a UTF-8 text labels file"):
        read_labels(path)
    path.write_text("\ufeffn01440764 tench\nn01443537 goldfish\n", encoding="utf-8")
    assert read_labels(path) == ["n01440764 tench", "n01443537 goldfish"]
