"""`trainer classify` refuses weights that leave a layer of the deploy net uninitialised."""

from __future__ import annotations

import cv2
import numpy as np
from google.protobuf import text_format

from datakit.formats import caffe_pb2
from trainer.net import Net
from trainer.weights import save_weights

NET = '''
layer {{ name: "in" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: 2 dim: 2 }} }} }}
layer {{ name: "{fc}" type: "InnerProduct" bottom: "data" top: "out" inner_product_param {{ num_output: 2 }} }}
'''


def test_renamed_layer_is_a_one_line_error(cli, tmp_path):
    cv2.imwrite(str(tmp_path / "x.png"), np.full((4, 4, 3), 50, np.uint8))
    trained = NET.format(fc="fc")
    save_weights(Net(text_format.Parse(trained, caffe_pb2.NetParameter()), caffe_pb2.TEST), tmp_path / "w.caffemodel")
    args = [str(tmp_path / "x.png"), "--weights", str(tmp_path / "w.caffemodel"), "--mean-value", "0,0,0",
            "--device", "cpu"]
    (tmp_path / "same.prototxt").write_text(trained)
    ok = cli("trainer", "classify", *args, "--model", str(tmp_path / "same.prototxt"))
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "renamed.prototxt").write_text(NET.format(fc="fc_new"))
    bad = cli("trainer", "classify", *args, "--model", str(tmp_path / "renamed.prototxt"))
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "fc_new" in lines[0] and "random" in lines[0]


def test_from_files_checks_coverage_and_picks_the_mean(tmp_path):
    import pytest

    from datakit.errors import ConfigError
    from datakit.formats.blobproto import write_mean
    from trainer.classify import Classifier
    trained = NET.format(fc="fc")
    save_weights(Net(text_format.Parse(trained, caffe_pb2.NetParameter()), caffe_pb2.TEST), tmp_path / "w.caffemodel")
    (tmp_path / "same.prototxt").write_text(trained)
    (tmp_path / "renamed.prototxt").write_text(NET.format(fc="fc_new"))
    weights = str(tmp_path / "w.caffemodel")
    with pytest.raises(ConfigError, match=r"no weights for layer\(s\) fc_new of .*renamed.prototxt.*random"):
        Classifier.from_files(tmp_path / "renamed.prototxt", weights)
    # a later file of a comma-separated list that reaches the layer makes the net whole
    save_weights(Net(text_format.Parse(NET.format(fc="fc_new"), caffe_pb2.NetParameter()), caffe_pb2.TEST),
                 tmp_path / "new.caffemodel")
    Classifier.from_files(tmp_path / "renamed.prototxt", f"{weights},{tmp_path / 'new.caffemodel'}")

    write_mean(tmp_path / "mean.binaryproto", np.stack([np.full((2, 2), v, np.float32) for v in (1, 2, 3)]))
    clf = Classifier.from_files(tmp_path / "same.prototxt", weights, mean_file=tmp_path / "mean.binaryproto")
    np.testing.assert_array_equal(clf.mean, [1, 2, 3])
    clf = Classifier.from_files(tmp_path / "same.prototxt", weights, mean_value=[7, 8, 9], oversample=False)
    np.testing.assert_array_equal(clf.mean, [7, 8, 9])
    assert clf.oversample is False
    with pytest.raises(ConfigError, match="not both"):
        Classifier.from_files(tmp_path / "same.prototxt", weights, mean_file=tmp_path / "mean.binaryproto",
                              mean_value=[1, 2, 3])
    with pytest.raises(ConfigError, match=r"no blob 'nope' to read scores from \(its outputs: out\)"):
        Classifier.from_files(tmp_path / "same.prototxt", weights, output_blob="nope")
