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


FC_DEPLOY = '''
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 7 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''


@pytest.mark.parametrize("forward_only", [False, True])
def test_timed_passes_allocate_no_layer_buffer_for_the_first_time(tmp_path, monkeypatch, forward_only):
    """Every buffer a layer makes on first use exists before the first timed layer runs.

    The gradients accumulate from pass to pass (as in `caffe time`), so the second backward is
    the first to take InnerProduct's accumulating path and its product buffer: a single warm-up
    pass left that allocation (CaffeNet: fc6's 151 MB of page faults) in the first timed pass.
    """
    import trainer.timing as timing
    from trainer.layers.base import Layer

    events: list[str] = []
    real_workspace = Layer.workspace

    def workspace(self, key, shape, dtype=None):
        before = self._workspace.get(key)
        buf = real_workspace(self, key, shape, dtype)
        if buf is not before:
            events.append(f"alloc {self.name}.{key}")
        return buf

    def synchronize(xp):
        events.append("sync")

    monkeypatch.setattr(Layer, "workspace", workspace)
    monkeypatch.setattr(timing, "synchronize", synchronize)
    model = tmp_path / "deploy.prototxt"
    model.write_text(FC_DEPLOY)
    with timing_net(model) as net:
        time_net(net, 2, forward_only=forward_only)
    first_sync = events.index("sync")
    assert any(e.startswith("alloc") for e in events[:first_sync])
    assert [e for e in events[first_sync:] if e != "sync"] == []
