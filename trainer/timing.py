"""`caffe time` for our nets: average forward and backward milliseconds per layer.

The measurement follows Caffe's tool: untimed passes to warm up (allocations,
kernel compilation), then for each iteration every layer's
forward in order and every layer's backward in reverse, each timed on its
own (with a device synchronisation on the GPU so the time is the layer's).
Layers that the net prunes from backward report 0 backward time, as they
cost nothing when training.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from collections.abc import Callable, Sequence

from datakit.errors import ConfigError
from datakit.formats import caffe_pb2

from trainer.backend import synchronize
from trainer.net import Net


@dataclass
class LayerTiming:
    name: str
    type: str
    forward_ms: float = 0.0
    backward_ms: float = 0.0


@dataclass
class TimingReport:
    layers: list[LayerTiming] = field(default_factory=list)
    iterations: int = 0
    batch_size: int = 0
    forward_ms: float = 0.0
    backward_ms: float = 0.0
    total_ms: float = 0.0
    forward_only: bool = False

    @property
    def forward_backward_ms(self) -> float:
        return self.forward_ms + self.backward_ms

    @property
    def ms_per_image(self) -> float:
        return self.forward_backward_ms / self.batch_size if self.batch_size else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-able data (``trainer time --report``)."""
        return {"iterations": self.iterations, "batch_size": self.batch_size,
                "forward_ms": self.forward_ms, "backward_ms": self.backward_ms,
                "ms_per_image": self.ms_per_image, "total_ms": self.total_ms,
                "layers": [vars(t) for t in self.layers]}

    def format(self) -> str:
        """Lines as `caffe time` prints them (plus ms per image)."""
        width = max((len(t.name) for t in self.layers), default=4)
        out = ["Average time per layer:"]
        for t in self.layers:
            out.append(f"{t.name:>{width}}\tforward: {t.forward_ms:.4f} ms.")
            if not self.forward_only:
                out.append(f"{t.name:>{width}}\tbackward: {t.backward_ms:.4f} ms.")
        out.append(f"Average Forward pass: {self.forward_ms:.4f} ms.")
        if not self.forward_only:
            out.append(f"Average Backward pass: {self.backward_ms:.4f} ms.")
            out.append(f"Average Forward-Backward: {self.forward_backward_ms:.4f} ms.")
        if self.batch_size:
            per = self.forward_backward_ms / self.batch_size
            out.append(f"Average per image (batch {self.batch_size}): {per:.4f} ms.")
        out.append(f"Total Time: {self.total_ms:.4f} ms.")
        return "\n".join(out)


def timing_net(model: str | os.PathLike, *, batch_size: int | None = None, phase: int = caffe_pb2.TRAIN,
               stages: Sequence[str] = (), level: int = 0, weights: str | None = None,
               xp: ModuleType | None = None) -> Net:
    """The net ``caffe time`` times: ``model`` read (and upgraded), its Input layers given
    ``batch_size`` as their first dimension when set, ``weights`` (comma-separated) copied
    when given, and, when the net has no loss (a deploy net), backward enabled through every
    layer so the backward pass is timed too. The caller closes it."""
    from datakit.formats.prototxt import read_net
    from trainer.weights import load_weights_list
    param = read_net(model)
    if batch_size:
        for lp in param.layer:
            if lp.type == "Input":
                for shape in lp.input_param.shape:
                    if len(shape.dim):
                        shape.dim[0] = batch_size
    net = Net(param, phase, xp=xp, stages=stages, level=level, seed=0, source=str(model))
    try:
        if weights:
            load_weights_list(net, weights)
        if not net.has_loss:
            net.enable_full_backward()  # as `caffe time`: every layer runs backward
    except BaseException:
        net.close()
        raise
    return net


def time_model(model: str | os.PathLike, iterations: int = 50, *, forward_only: bool = False,
               progress: Callable[[int], None] | None = None, **net_options: Any) -> TimingReport:
    """``caffe time`` on a prototxt: ``timing_net(model, **net_options)``, timed by ``time_net``."""
    net = timing_net(model, **net_options)
    try:
        return time_net(net, iterations, forward_only=forward_only, progress=progress)
    finally:
        net.close()


def _batch_size(net: Net) -> int:
    """The leading dimension of the first data/input top (0 when unknown)."""
    for layer, tops in zip(net.layers, net.top_vecs):
        if layer.is_data and tops and tops[0].shape:
            return int(tops[0].shape[0])
    return 0


def time_net(net: Net, iterations: int = 50, *, forward_only: bool = False, warmup: int | None = None,
             progress: Callable[[int], None] | None = None) -> TimingReport:
    """Time ``iterations`` forward(+backward) passes layer by layer, after ``warmup`` untimed ones.

    The timed passes are the steady state: nothing in them may allocate for the first time.
    Caffe's tool warms up with one pass because Caffe allocates every buffer at setup; ours
    are made on first use, and as in ``caffe time`` the parameter gradients accumulate from
    pass to pass, so the *second* backward is the first to accumulate and makes the buffers
    that path needs (InnerProduct's product buffer: 151 MB for CaffeNet's fc6, whose page
    faults would otherwise be charged to the first timed pass). Hence the default: one warm-up
    pass forward-only, two with backward.
    """
    if iterations < 1:
        raise ConfigError(f"iterations must be at least 1, got {iterations}")
    if warmup is None:
        warmup = 1 if forward_only else 2
    xp = net.xp
    for _ in range(warmup):
        net.forward()
        if not forward_only:
            net.backward()
    synchronize(xp)
    report = TimingReport([LayerTiming(n, layer.type) for n, layer in zip(net.layer_names, net.layers)],
                          iterations=iterations, batch_size=_batch_size(net), forward_only=forward_only)
    started = time.perf_counter()
    clock = time.perf_counter
    for it in range(iterations):
        for i, t in enumerate(report.layers):
            t0 = clock()
            net.forward_layer(i)
            synchronize(xp)
            t.forward_ms += (clock() - t0) * 1000.0
        if not forward_only:
            for i in range(len(report.layers) - 1, -1, -1):
                if not net.layer_need_backward[i]:
                    continue
                t0 = clock()
                net.backward_layer(i)
                synchronize(xp)
                report.layers[i].backward_ms += (clock() - t0) * 1000.0
        if progress is not None:
            progress(it + 1)
    report.total_ms = (clock() - started) * 1000.0
    for t in report.layers:
        t.forward_ms /= iterations
        t.backward_ms /= iterations
    report.forward_ms = sum(t.forward_ms for t in report.layers)
    report.backward_ms = sum(t.backward_ms for t in report.layers)
    return report
