"""A convolution's weight gradient in its two GEMM arrangements, at the shapes of real first layers.

Not part of `make bench` (no target): the table behind ``ConvolutionLayer.backward``'s rule
(benchmarks/RESULTS.md, "weight gradient"). For one group, with dy (N, mg, P) and the layer's
im2col columns col (kk, N·P):

- ``rows``: dy transposed once to (N·P, mg), then ``col · dyᵀ`` (plain row-major operands) and the
  (kk, mg) product transposed back;
- ``cols``: dy transposed once to (mg, N·P), then ``dy · colᵀ`` (col as the transposed operand).

The layer takes ``cols`` when N·P >= mg·kk. Usage: ``python -m benchmarks.conv_weight_grad_micro``.
Prints the median of 7 timed calls of each, alternating, after one untimed call of each.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

# (name, N, mg, kk, P): the batch, outputs per group, inputs·kernel per group, output pixels per image
SHAPES = [
    ("LeNet conv1, batch 64", 64, 20, 25, 576),
    ("LeNet conv2, batch 64", 64, 50, 500, 64),
    ("CaffeNet conv1, batch 16", 16, 96, 363, 3025),
    ("CaffeNet conv2 (a group), batch 16", 16, 128, 1200, 729),
    ("CaffeNet conv3, batch 16", 16, 384, 2304, 169),
    ("VGG conv1_1, batch 4", 4, 64, 27, 50176),
    ("VGG conv1_2, batch 2", 2, 64, 576, 50176),
    ("VGG conv2_1-like, batch 16", 16, 64, 576, 3136),
]


def _median_ms(fns: dict[str, Callable[[], object]], repeat: int = 7) -> dict[str, float]:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1000.0)
    return {k: statistics.median(v) for k, v in times.items()}


def _arrangements(col: np.ndarray, dy: np.ndarray) -> dict[str, Callable[[], object]]:
    n, mg, p = dy.shape
    dyt = np.empty((n, p, mg), np.float32)
    dy2 = np.empty((mg, n, p), np.float32)

    def rows() -> object:
        dyt[...] = dy.transpose(0, 2, 1)
        return (col @ dyt.reshape(-1, mg)).T

    def cols() -> object:
        dy2[...] = dy.transpose(1, 0, 2)
        return dy2.reshape(mg, -1) @ col.T

    return {"rows": rows, "cols": cols}


def main() -> None:
    from benchmarks.machine import describe  # noqa: PLC0415
    print(f"conv weight gradient, one group, float32; {describe()}")
    rng = np.random.default_rng(0)
    for name, n, mg, kk, p in SHAPES:
        col = rng.random((kk, n * p), dtype=np.float32)
        dy = rng.random((n, mg, p), dtype=np.float32)
        ms = _median_ms(_arrangements(col, dy))
        rule = "cols" if n * p >= mg * kk else "rows"
        print(f"  {name:<36} N·P {n * p:>7} mg·kk {mg * kk:>7}: rows {ms['rows']:7.2f} ms  "
              f"cols {ms['cols']:7.2f} ms  (rule takes {rule})")


if __name__ == "__main__":
    main()
