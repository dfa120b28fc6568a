"""embed: the backward of an LRCN-sized Embed layer (8801-word vocabulary, 1000 outputs).

Ours (trainer.layers.embed.row_sums: sort the T·N indices, segment sums, add them into the rows of
the zeroed diff; the zeroing is timed too) against, in the same run,
the one-hot GEMM it replaced (onehotᵀ · dy, rows·vocab·outputs multiply-adds). Both give W's
gradient; the script checks they agree. Target: >= 10x.

    python -m benchmarks.bench_embed [--rows 1000] [--vocab 8801] [--outputs 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from trainer.layers.embed import row_sums


def best_of(repeat: int, fn) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000, help="T x N words per batch (LRCN: 20 x 50)")
    ap.add_argument("--vocab", type=int, default=8801)
    ap.add_argument("--outputs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    index = rng.integers(0, args.vocab, args.rows)
    dy = rng.standard_normal((args.rows, args.outputs)).astype(np.float32)

    def onehot() -> np.ndarray:
        hot = (index[:, None] == np.arange(args.vocab)[None, :]).astype(np.float32)
        return np.ascontiguousarray(hot.T) @ dy

    base_s, want = best_of(args.repeat, onehot)
    grad = np.zeros((args.vocab, args.outputs), np.float32)  # the layer's diff, zeroed by the net as for both

    def ours() -> np.ndarray:
        grad[...] = 0
        keys, totals = row_sums(np, dy, index)
        grad[keys] += totals
        return grad

    grad[...] = 1  # touch the pages once, outside the timing
    ours_s, got = best_of(args.repeat, ours)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    print(f"rows {args.rows}, vocab {args.vocab}, outputs {args.outputs}: one-hot GEMM {base_s * 1e3:.1f} ms, "
          f"row_sums {ours_s * 1e3:.1f} ms")
    print(f"RATIO embed: {base_s / ours_s:.1f}x (target 10x)")


if __name__ == "__main__":
    main()
