"""`caffe test`: run a net for N batches and average each output blob.

Every element of every output blob is averaged over the batches (Caffe's
test_score), so a scalar loss or accuracy gives one number and a
multi-valued output (per-class accuracy) gives one per element.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Mapping

import numpy as np

from datakit.errors import ConfigError

if TYPE_CHECKING:
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


class OutputSums:
    """Running float64 sums of a net's output blobs over batches (Caffe's test_score).

    Shared by `trainer test` (``score_net``) and the solver's test passes, so both
    average the same way: element by element, in float64, over the batches added.
    """

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.count = 0

    def add(self, outputs: Mapping[str, Any]) -> None:
        """One batch's outputs ({blob name: host array})."""
        for name, value in outputs.items():
            v = np.asarray(value, dtype=np.float64)
            self.sums[name] = self.sums[name] + v if name in self.sums else v.copy()
        self.count += 1

    def means(self) -> dict[str, np.ndarray]:
        """Each output's element-wise mean over the batches added."""
        return {name: total / max(self.count, 1) for name, total in self.sums.items()}


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
    sums = OutputSums()
    loss_total = 0.0
    done = 0
    interrupted = False
    try:
        for it in range(iterations):
            loss = net.forward()
            outs = net.outputs()
            sums.add({n: outs[n] for n in names})
            loss_total += loss
            done += 1
            if on_batch is not None:
                on_batch(it, outs)
    except KeyboardInterrupt:
        # Ctrl-C: the batches already scored are not thrown away.
        if done == 0:
            raise
        interrupted = True
    means = sums.means()
    return ScoreResult(done, names, means, net.output_loss_weights(), loss_total / done, interrupted=interrupted)


# The names before the rename, for callers written against them. Pytest collects any
# module-level ``test_*`` a test file imports, so tests import ``score_net`` instead.
test_net = score_net
TestResult = ScoreResult
