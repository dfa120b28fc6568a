"""trainer.timing: the net `caffe time` builds (batch size, full backward) and the report."""

from __future__ import annotations

import json

import pytest

from datakit.errors import ConfigError
from trainer.timing import time_model, time_net, timing_net

DEPLOY = '''
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "prob" type: "Softmax" bottom: "conv" top: "prob" }
'''


def test_timing_net_sets_the_batch_and_runs_backward_without_a_loss(tmp_path):
    model = tmp_path / "deploy.prototxt"
    model.write_text(DEPLOY)
    with timing_net(model, batch_size=5) as net:
        assert net.blob("data").shape == (5, 3, 6, 6)
        assert not net.has_loss and net.layer_need_backward == [False, True, True]
    with timing_net(model) as net:
        assert net.blob("data").shape == (2, 3, 6, 6)
        with pytest.raises(ConfigError, match="at least 1, got 0"):
            time_net(net, 0)


def test_time_model_report_as_dict(tmp_path):
    model = tmp_path / "deploy.prototxt"
    model.write_text(DEPLOY)
    seen = []
    report = time_model(model, 2, batch_size=3, progress=seen.append)
    assert seen == [1, 2]
    data = json.loads(json.dumps(report.as_dict()))
    assert set(data) == {"iterations", "batch_size", "forward_ms", "backward_ms", "ms_per_image", "total_ms",
                         "layers"}
    assert data["iterations"] == 2 and data["batch_size"] == 3
    assert [layer["name"] for layer in data["layers"]] == ["in", "conv", "prob"]
    assert data["layers"][1]["backward_ms"] > 0 and data["layers"][0]["backward_ms"] == 0
    assert data["forward_ms"] == pytest.approx(sum(layer["forward_ms"] for layer in data["layers"]))
