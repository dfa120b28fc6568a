"""HDF5Output and WindowData: what they write and read, as Caffe's layers do."""

from __future__ import annotations


import numpy as np
import pytest

from datakit.errors import FormatError
from tests.test_layers import TEST, make_layer, rand

# ------------------------------------------------------------ HDF5Output ----


def test_hdf5_output_appends_every_batch_and_hdf5data_reads_it_back(tmp_path):
    import h5py

    from tests.test_net import net_param
    from trainer.net import Net
    text = f'''
    layer {{ name: "in" type: "Input" top: "x" top: "y" input_param {{ shape {{ dim: 3 dim: 2 dim: 2 }} shape {{ dim: 3 }} }} }}
    layer {{ name: "out" type: "HDF5Output" bottom: "x" bottom: "y" hdf5_output_param {{ file_name: "{tmp_path}/o/out.h5" }} }}'''
    rng = np.random.default_rng(0)
    batches = []
    with Net(net_param(text), TEST) as net:
        for _ in range(3):
            batch = (rng.standard_normal((3, 2, 2)).astype(np.float32), rng.integers(0, 5, 3).astype(np.float32))
            net.blobs["x"].data[...] = batch[0]
            net.blobs["y"].data[...] = batch[1]
            net.forward()
            batches.append(batch)
            with h5py.File(tmp_path / "o/out.h5", "r") as h:  # flushed: readable while the net runs
                assert h["data"].shape[0] == 3 * len(batches)
    with h5py.File(tmp_path / "o/out.h5", "r") as h:
        np.testing.assert_array_equal(h["data"][...], np.concatenate([b[0] for b in batches]))
        np.testing.assert_array_equal(h["label"][...], np.concatenate([b[1] for b in batches]))
    (tmp_path / "list.txt").write_text(f"{tmp_path}/o/out.h5\n")
    reader = f'layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{tmp_path}/list.txt" batch_size: 9 }} }}'
    with Net(net_param(reader), TEST) as net:
        net.forward()
        np.testing.assert_array_equal(net.blobs["label"].data, np.concatenate([b[1] for b in batches]))
    with pytest.raises(FormatError, match="file_name is required"):
        make_layer('type: "HDF5Output"', [rand(2, 1), rand(2)], n_tops=0)


# ------------------------------------------------------------ WindowData ----


def _window_project(tmp_path, extra="", transform="crop_size: 8", fg_fraction=0.5):
    import cv2

    from tests.test_net import net_param
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(2)]
    for k, img in enumerate(imgs):
        cv2.imwrite(str(tmp_path / f"im{k}.png"), img)
    (tmp_path / "windows.txt").write_text(
        "# 0\nim0.png\n3\n20\n30\n3\n1 0.9 2 3 11 12\n0 0.1 0 0 29 19\n2 0.4 5 5 9 9\n"   # fg, bg, unused
        "# 1\nim1.png\n3\n20\n30\n2\n3 0.7 10 4 25 15\n0 0.0 20 10 29 19\n")
    text = (f'layer {{ name: "w" type: "WindowData" top: "data" top: "label" window_data_param {{ source: '
            f'"{tmp_path}/windows.txt" root_folder: "{tmp_path}/" batch_size: 8 fg_fraction: {fg_fraction} {extra} }} '
            f'transform_param {{ {transform} }} }}')
    return imgs, net_param(text)


def test_window_data_batches_warp_windows_with_caffes_labels(tmp_path):
    import cv2

    from trainer.net import Net
    imgs, param = _window_project(tmp_path, extra="cache_images: true", transform="crop_size: 8 mean_value: 10 scale: 0.5")
    with Net(param, TEST, seed=1) as net:
        net.forward()
        data, label = net.blobs["data"].data, net.blobs["label"].data
        assert data.shape == (8, 3, 8, 8)
        assert sorted(label[:4]) == [0] * 4 and set(label[4:]) <= {1, 3}   # background first, then foreground
        for i, lab in enumerate(label[4:], start=4):
            img, (x1, y1, x2, y2) = (imgs[0], (2, 3, 11, 12)) if lab == 1 else (imgs[1], (10, 4, 25, 15))
            want = cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (8, 8), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(data[i], (want.transpose(2, 0, 1) - 10.0) * 0.5)
        keys = net.layer("w").last_keys
    with Net(param, TEST, seed=1) as again:   # batch k is a function of (seed, k): a resume repeats it
        again.forward()
        assert again.layer("w").last_keys == keys


def test_window_data_context_pad_square_and_mirror_pad_as_caffe(tmp_path):
    import cv2

    from trainer.net import Net
    imgs, param = _window_project(tmp_path, extra="context_pad: 2 crop_mode: 'square' bg_threshold: 0.05",
                                  transform="crop_size: 10 mirror: true", fg_fraction=0.0)
    with Net(param, TEST, seed=0) as net:
        net.forward()
        data, label = net.blobs["data"].data, net.blobs["label"].data
    assert (label == 0).all()
    # The one background window under 0.05 overlap, (20,10)-(29,19) of im1, widened by 10/6 about its centre:
    # x 17..33, y 7..23 (17x17), clipped to x 17..29, y 7..19; scale 10/17 warps the 13x13 part to 8x8;
    # the clipped-off right/bottom 4 pixels become 2 zero columns (left when mirrored) and 2 zero rows.
    part = cv2.resize(imgs[1][7:20, 17:30], (8, 8), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    plain = np.zeros((3, 10, 10), np.float32)
    plain[:, :8, :8] = part
    mirrored = np.zeros((3, 10, 10), np.float32)
    mirrored[:, :8, 2:] = part[:, :, ::-1]
    kinds = [0 if np.array_equal(d, plain) else 1 if np.array_equal(d, mirrored) else -1 for d in data]
    assert -1 not in kinds and set(kinds) == {0, 1}


def test_window_data_errors_name_the_file_and_line(tmp_path):
    from trainer.layers.data_window import parse_window_file
    (tmp_path / "w.txt").write_text("# 0\nim.png\n3\n20\nthirty\n")
    with pytest.raises(FormatError, match=r"w.txt:5: invalid literal"):
        parse_window_file(tmp_path / "w.txt", "")
    (tmp_path / "w.txt").write_text("# 0\nim.png\n3\n20\n30\n1\n1 0.9 2 3 11\n")
    with pytest.raises(FormatError, match=r"w.txt:7: a window line has 6 values"):
        parse_window_file(tmp_path / "w.txt", "")


def test_window_data_reads_the_old_fields_and_a_mean_file(tmp_path):
    import cv2

    from datakit.formats.blobproto import write_mean
    from tests.test_net import net_param
    from trainer.net import Net
    imgs, _ = _window_project(tmp_path)
    mean = np.random.default_rng(3).uniform(0, 255, (3, 12, 12)).astype(np.float32)
    write_mean(tmp_path / "mean.binaryproto", mean)
    # window_data_param's deprecated crop_size / mean_file, as in R-CNN's original prototxt (no upgrade here)
    text = (f'layer {{ name: "w" type: "WindowData" top: "data" top: "label" window_data_param {{ source: '
            f'"{tmp_path}/windows.txt" root_folder: "{tmp_path}/" batch_size: 2 fg_fraction: 1 crop_size: 8 '
            f'mean_file: "{tmp_path}/mean.binaryproto" fg_threshold: 0.8 }} }}')
    with Net(net_param(text), TEST, seed=0) as net:   # net_param parses without the upgrade
        net.forward()
        data, label = net.blobs["data"].data, net.blobs["label"].data
    assert (label == 1).all()   # the only window over 0.8 overlap
    want = cv2.resize(imgs[0][3:13, 2:12], (8, 8), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_allclose(data[0], want - mean[:, 2:10, 2:10], rtol=1e-6, atol=1e-4)  # mean centred
