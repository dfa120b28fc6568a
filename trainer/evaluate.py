"""`caffe test`: run a net for N batches and average each output blob.

Every element of every output blob is averaged over the batches (Caffe's
test_score), so a scalar loss or accuracy gives one number and a
multi-valued output (per-class accuracy) gives one per element.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable

import numpy as np

from datakit.errors import ConfigError

from trainer.net import Net


@dataclass
class ScoreResult:
    iterations: int
    names: list[str]
    means: dict[str, np.ndarray]
    loss_weights: dict[str, float]
    mean_loss: float
    batches: list[dict[str, np.ndarray]] = field(default_factory=list)
    interrupted: bool = False

    def lines(self) -> list[str]:
        """`Loss: X` then `NAME = VALUE` per output element, as `caffe test` ends."""
        out = [f"Loss: {self.mean_loss:.6g}"]
        for name in self.names:
            for v in np.asarray(self.means[name]).reshape(-1):
                out.append(f"{name} = {float(v):.6g}")
        return out

    def as_dict(self) -> dict:
        return {"iterations": self.iterations, "interrupted": self.interrupted, "loss": self.mean_loss,
                "outputs": {n: np.asarray(self.means[n]).reshape(-1).tolist() for n in self.names}}


def batch_lines(it: int, outputs: dict[str, np.ndarray], names: list[str]) -> list[str]:
    """``Batch IT, NAME = VALUE`` per element of each output, as `caffe test` prints every batch."""
    return [f"Batch {it}, {name} = {float(v):.6g}" for name in names for v in np.asarray(outputs[name]).reshape(-1)]


def score_net(net: Net, iterations: int,
              on_batch: Callable[[int, dict[str, np.ndarray]], None] | None = None) -> ScoreResult:
    """Forward ``iterations`` batches; the mean of every output and of the weighted loss."""
    if iterations < 1:
        raise ConfigError(f"iterations must be at least 1, got {iterations}")
    sources = [layer for layer in net.layers if layer.is_data]
    if sources and all(layer.type == "Input" for layer in sources):
        raise ConfigError(f"net {net.name!r}: its only inputs are Input layers ({sources[0].name}), so there "
                          "is nothing to score; give the train_val net, whose TEST phase reads a database")
    names = list(net.output_names)
    sums: dict[str, np.ndarray] = {}
    loss_total = 0.0
    done = 0
    interrupted = False
    try:
        for it in range(iterations):
            loss = net.forward()
            outs = net.outputs()
            for n in names:
                v = np.asarray(outs[n], dtype=np.float64)
                sums[n] = sums[n] + v if n in sums else v.copy()
            loss_total += loss
            done += 1
            if on_batch is not None:
                on_batch(it, outs)
    except KeyboardInterrupt:
        # Ctrl-C: the batches already scored are not thrown away.
        if done == 0:
            raise
        interrupted = True
    means = {n: sums[n] / done for n in names}
    return ScoreResult(done, names, means, net.output_loss_weights(), loss_total / done, interrupted=interrupted)


# The names before the rename, for callers written against them. Pytest collects any
# module-level ``test_*`` a test file imports, so tests import ``score_net`` instead.
test_net = score_net
TestResult = ScoreResult
