"""Kernels alone at CaffeNet's shapes: NumPy twins, compiled (numba) and PyTorch where it has one, one process.

Not part of `make bench` (no target): the per-kernel table of benchmarks/RESULTS.md (issue 16).
Usage: ``python -m benchmarks.kernels_micro [BATCH]`` (default 16); needs torch (the `bench` extra).
Prints ms, the minimum of 3 timed calls after one untimed call.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np


def _ms(fn: Callable[[], object], repeat: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000.0


def _both(fn: Callable[[], tuple[float, ...]]) -> dict[bool, tuple[float, ...]]:
    from trainer import kernels  # noqa: PLC0415
    out = {}
    for on in (False, True):
        prev = kernels.use_compiled(on)
        try:
            out[on] = fn()
        finally:
            kernels.use_compiled(prev)
    return out


def main(argv: list[str] | None = None) -> None:
    import torch  # noqa: PLC0415 - benchmark-only dependency
    from torch.nn import functional as F  # noqa: N812, PLC0415

    from benchmarks.machine import describe  # noqa: PLC0415
    from trainer import kernels as k  # noqa: PLC0415
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 16
    rng = np.random.default_rng(0)
    print(f"kernels at CaffeNet shapes, batch {n}, {describe()}")

    def pool(shape: tuple[int, ...], out: int) -> None:
        x = rng.standard_normal(shape).astype(np.float32)
        y, arg = k.max_pool_forward(x, 3, 3, 0, 0, 2, 2, out, out)
        dy = np.ones_like(y)
        res = _both(lambda: (_ms(lambda: k.max_pool_forward(x, 3, 3, 0, 0, 2, 2, out, out)),
                             _ms(lambda: k.max_pool_backward(dy, arg, x.shape, 3, 3, 0, 0, 2, 2))))
        tx = torch.from_numpy(x).requires_grad_()
        g = torch.ones_like(F.max_pool2d(tx, 3, 2, ceil_mode=True))
        tf = _ms(lambda: F.max_pool2d(tx, 3, 2, ceil_mode=True))
        tb = _ms(lambda: torch.autograd.grad(F.max_pool2d(tx, 3, 2, ceil_mode=True), tx, g)) - tf
        print(f"  max pool {shape}: NumPy {res[False][0]:.1f}+{res[False][1]:.1f} | compiled "
              f"{res[True][0]:.1f}+{res[True][1]:.1f} | PyTorch {tf:.1f}+{tb:.1f} ms")

    def lrn(shape: tuple[int, ...]) -> None:
        x = rng.standard_normal(shape).astype(np.float32)
        y, s = k.lrn_across_forward(x, 5, 1e-4, 0.75, 1.0)
        dy = np.ones_like(y)
        res = _both(lambda: (_ms(lambda: k.lrn_across_forward(x, 5, 1e-4, 0.75, 1.0)),
                             _ms(lambda: k.lrn_across_backward(x, y, s, dy, 5, 1e-4, 0.75))))
        tx = torch.from_numpy(x).requires_grad_()
        m = torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)
        g = torch.ones_like(tx)
        tf = _ms(lambda: m(tx))
        tb = _ms(lambda: torch.autograd.grad(m(tx), tx, g)) - tf
        print(f"  LRN {shape}: NumPy {res[False][0]:.1f}+{res[False][1]:.1f} | compiled "
              f"{res[True][0]:.1f}+{res[True][1]:.1f} | PyTorch {tf:.1f}+{tb:.1f} ms")

    def col2im(shape: tuple[int, int, int, int], kk: int, pad: int) -> None:
        col = rng.standard_normal(k.im2col(np.zeros(shape, np.float32), kk, kk, pad, pad, 1, 1).shape)
        col = col.astype(np.float32)
        res = _both(lambda: (_ms(lambda: k.col2im(col, shape, kk, kk, pad, pad, 1, 1)),))
        print(f"  col2im {shape} k{kk}: NumPy {res[False][0]:.1f} | compiled {res[True][0]:.1f} ms")

    def im2col(shape: tuple[int, int, int, int], kk: int, pad: int, stride: int) -> None:
        x = rng.standard_normal(shape).astype(np.float32)
        res = _both(lambda: (_ms(lambda: k.im2col(x, kk, kk, pad, pad, stride, stride)),))
        print(f"  im2col {shape} k{kk} s{stride}: NumPy {res[False][0]:.1f} | compiled {res[True][0]:.1f} ms")

    im2col((n, 3, 227, 227), 11, 0, 4)
    im2col((n, 96, 27, 27), 5, 2, 1)
    im2col((n, 256, 13, 13), 3, 1, 1)
    im2col((n, 384, 13, 13), 3, 1, 1)
    pool((n, 96, 55, 55), 27)
    lrn((n, 96, 27, 27))
    pool((n, 256, 27, 27), 13)
    lrn((n, 256, 13, 13))
    pool((n, 256, 13, 13), 6)
    col2im((n, 96, 27, 27), 5, 2)
    col2im((n, 256, 13, 13), 3, 1)
    col2im((n, 384, 13, 13), 3, 1)


if __name__ == "__main__":
    main()
