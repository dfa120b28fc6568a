"""Transforms against a per-pixel transcription of Caffe's DataTransformer loop."""

from __future__ import annotations

import numpy as np
import pytest

from datakit.errors import ConfigError
from datakit.formats import caffe_pb2
from datakit.formats.blobproto import write_mean
from datakit.transform import TEST, TRAIN, Plan, Transformer


def caffe_reference(img, mean, mean_values, scale, crop, h_off, w_off, mirror):
    """Caffe's Transform(Datum) inner loop, index for index."""
    c_n, h_n, w_n = img.shape
    oh = crop or h_n
    ow = crop or w_n
    out = np.zeros((c_n, oh, ow), np.float32)
    for c in range(c_n):
        for h in range(oh):
            for w in range(ow):
                top_w = ow - 1 - w if mirror else w
                v = np.float32(img[c, h_off + h, w_off + w])
                if mean is not None:
                    v = v - mean[c, h_off + h, w_off + w]
                elif mean_values:
                    v = v - np.float32(mean_values[c if len(mean_values) > 1 else 0])
                out[c, h, top_w] = v * np.float32(scale)
    return out


def _tp(**kw):
    return caffe_pb2.TransformationParameter(**kw)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 3, 9, 11), dtype=np.uint8)


@pytest.fixture
def mean_file(tmp_path):
    mean = np.random.default_rng(1).uniform(0, 255, (3, 9, 11)).astype(np.float32)
    path = tmp_path / "mean.binaryproto"
    write_mean(path, mean)
    return path, mean


def test_train_crop_mirror_mean_file_scale_match_caffe(batch, mean_file):
    path, mean = mean_file
    t = Transformer(_tp(crop_size=5, mirror=True, mean_file=path.name, scale=0.5), TRAIN, base_dir=path.parent)
    plan = t.plan(len(batch), 9, 11, np.random.default_rng(3))
    assert plan.mirror.any() and not plan.mirror.all()
    assert plan.h_off.max() <= 4 and plan.w_off.max() <= 6
    out = t.apply(batch, plan)
    assert out.shape == (6, 3, 5, 5) and out.dtype == np.float32
    for i in range(len(batch)):
        ref = caffe_reference(batch[i], mean, None, 0.5, 5, plan.h_off[i], plan.w_off[i], plan.mirror[i])
        np.testing.assert_allclose(out[i], ref, rtol=1e-6, atol=1e-5)


def test_mean_is_subtracted_before_scale():
    img = np.full((1, 1, 2, 2), 10, np.uint8)
    t = Transformer(_tp(mean_value=[4.0], scale=0.5), TRAIN)
    out = t.apply(img, t.plan(1, 2, 2, np.random.default_rng(0)))
    assert np.all(out == 3.0)  # (10 - 4) * 0.5, not 10 * 0.5 - 4


def test_test_phase_center_crop_and_no_mirror(batch):
    t = Transformer(_tp(crop_size=4, mirror=True, mean_value=[10, 20, 30]), TEST)
    plan = t.plan(len(batch), 9, 11, None)
    assert set(plan.h_off) == {(9 - 4) // 2} and set(plan.w_off) == {(11 - 4) // 2}
    assert not plan.mirror.any()
    out = t.apply(batch, plan)
    for i in range(len(batch)):
        ref = caffe_reference(batch[i], None, [10, 20, 30], 1.0, 4, 2, 3, False)
        np.testing.assert_array_equal(out[i], ref)


def test_exact_offsets_and_mirror_of_a_known_image():
    img = np.arange(1 * 3 * 4, dtype=np.uint8).reshape(1, 1, 3, 4)
    t = Transformer(_tp(crop_size=2), TRAIN)
    out = t.apply(img, Plan(np.array([1]), np.array([2]), np.array([True])))
    # rows 1..2, columns 2..3, flipped: [[7, 6], [11, 10]]
    np.testing.assert_array_equal(out[0, 0], [[7, 6], [11, 10]])


def test_random_draws_cover_every_offset_and_are_reproducible():
    t = Transformer(_tp(crop_size=3, mirror=True), TRAIN)
    a = t.plan(2000, 5, 5, np.random.default_rng(7))
    b = t.plan(2000, 5, 5, np.random.default_rng(7))
    assert set(a.h_off) == {0, 1, 2} and set(a.w_off) == {0, 1, 2}
    assert 0.45 < a.mirror.mean() < 0.55
    assert np.array_equal(a.h_off, b.h_off) and np.array_equal(a.mirror, b.mirror)


def test_gather_path_equals_host_path(batch, mean_file):
    path, _ = mean_file
    t = Transformer(_tp(crop_size=6, mirror=True, mean_file=str(path), scale=0.25), TRAIN)
    plan = t.plan(len(batch), 9, 11, np.random.default_rng(5))
    host = t.apply(batch, plan)
    out = np.empty_like(host)
    t._apply_gather(batch, plan, out, np)
    out *= np.float32(0.25)
    np.testing.assert_allclose(host, out, rtol=1e-6)


def test_float_input_and_no_crop(batch):
    t = Transformer(_tp(scale=2.0, mean_value=[1.0]), TEST)
    x = batch.astype(np.float32) / 7
    out = t.apply(x, t.plan(len(x), 9, 11, None))
    np.testing.assert_allclose(out, (x - 1.0) * 2.0, rtol=1e-6)


def test_setup_errors_are_clear(mean_file):
    path, _ = mean_file
    with pytest.raises(ConfigError, match="crop_size 12 is larger than the 9x11"):
        Transformer(_tp(crop_size=12), TRAIN).output_shape(3, 9, 11)
    with pytest.raises(ConfigError, match=r"3x9x11 \(CxHxW\) but the images are 3x10x10"):
        Transformer(_tp(mean_file=str(path)), TRAIN).output_shape(3, 10, 10)
    with pytest.raises(ConfigError, match="2 mean_value entries for 3-channel"):
        Transformer(_tp(mean_value=[1, 2]), TRAIN).output_shape(3, 10, 10)
    with pytest.raises(ConfigError, match="not both"):
        Transformer(_tp(mean_value=[1], mean_file=str(path)), TRAIN)


@pytest.mark.parametrize("mean", ["file", "values", "none"])
def test_uncropped_unmirrored_batches_take_one_operation_and_match_caffe(batch, mean_file, mean, monkeypatch):
    """Without a crop or a flip the host path transforms the batch in one operation (LeNet's case);
    every pixel is still Caffe's value, and batches too small to split stay in the calling thread."""
    import datakit.transform as transform

    path, mean_arr = mean_file
    batch = np.concatenate([batch, batch[::-1], batch])  # 18 images: old rule split >= 16 over the pool
    kw = {"file": {"mean_file": str(path)}, "values": {"mean_value": [3.0, 5.0, 7.0]}, "none": {}}[mean]
    t = Transformer(_tp(scale=0.5, **kw), TRAIN)
    t.threads = 4
    plan = t.plan(len(batch), 9, 11, np.random.default_rng(2))
    assert not plan.mirror.any()
    submitted = []
    monkeypatch.setattr(transform, "decode_pool", lambda: submitted.append(1))  # would fail if called
    out = t.apply(batch, plan)
    assert submitted == []
    for i, img in enumerate(batch):
        ref = caffe_reference(img, mean_arr if mean == "file" else None,
                              kw.get("mean_value", []), 0.5, 0, 0, 0, False)
        np.testing.assert_array_equal(out[i], ref)


@pytest.mark.parametrize("phase", [TEST, TRAIN])
def test_real_imagenet_mean_is_cropped_at_the_images_offsets(phase, shared_data):
    """CaffeNet's recipe: the 256x256 ILSVRC-2012 mean (the real binaryproto), crop 227. TEST: offsets
    (256-227)//2 = 14 for image and mean alike; TRAIN: the mean cut at each image's random offset,
    mirrored with it. Subtracting the mean's top-left (or its centre in TRAIN) 227x227, or a per-channel
    average, fails."""
    path = shared_data / "means" / "imagenet_mean.binaryproto"
    from datakit.formats.blobproto import read_mean
    mean = read_mean(path).astype(np.float32)
    assert mean.shape == (3, 256, 256)
    img = np.random.default_rng(2).integers(0, 256, size=(3, 3, 256, 256), dtype=np.uint8)
    t = Transformer(_tp(crop_size=227, mirror=True, mean_file=path.name), phase, base_dir=path.parent)
    plan = t.plan(3, 256, 256, np.random.default_rng(11))
    out = t.apply(img, plan)
    if phase == TEST:
        assert set(plan.h_off) == {14} and set(plan.w_off) == {14} and not plan.mirror.any()
    else:
        assert len(set(plan.h_off)) > 1
    for i in range(3):
        h0, w0 = int(plan.h_off[i]), int(plan.w_off[i])
        want = img[i, :, h0:h0 + 227, w0:w0 + 227].astype(np.float32) - mean[:, h0:h0 + 227, w0:w0 + 227]
        if plan.mirror[i]:
            want = want[:, :, ::-1]
        np.testing.assert_allclose(out[i], want, rtol=0, atol=1e-4)
