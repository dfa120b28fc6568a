"""Fillers on the hot path: DummyData's per-forward refill and Dropout's mask against PyTorch (issue 16 item 2).

Ours: the DummyData layer's forward (gaussian, 16x3x227x227, CaffeNet's input) and a TRAIN Dropout
layer's forward (ratio 0.5, 16x4096, fc6's output), each through ``Layer.forward`` as the net runs
it. PyTorch: ``torch.randn`` of the same shape (and, for information, the in-place ``normal_``) and
``F.dropout(training=True)``. The two sides alternate call by call in one process; each figure is
the minimum over the rounds (the machine is shared, and the minimum is the least disturbed call).
``before`` is the refill this replaced (``fill``: Generator.normal in float64, then float32).

RATIO = ours / PyTorch time (target <= 1.0). Without torch the baseline is skipped with a message.
Usage: ``python -m benchmarks.bench_fillers [--rounds N] [--batch B]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _once(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def _interleaved(rounds: int, fns: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """Minimum ms of each function, the functions called in turn, one call each per round."""
    for fn in fns.values():  # warm-up: compilation, first-touch of buffers
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], _once(fn))
    return best


def _layer(text: str, phase: int) -> tuple[Any, Any]:
    from google.protobuf import text_format  # noqa: PLC0415

    from datakit.formats import caffe_pb2  # noqa: PLC0415
    from trainer.net import Net  # noqa: PLC0415
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase, seed=0)
    return net, net.layers[-1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench_fillers", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15, help="alternating rounds; each figure is their minimum")
    p.add_argument("--batch", type=int, default=16, help="batch size of both workloads (default 16)")
    args = p.parse_args(argv)

    from benchmarks.machine import describe  # noqa: PLC0415
    from datakit.formats import caffe_pb2  # noqa: PLC0415
    from trainer import counter_rng  # noqa: PLC0415
    from trainer.fillers import fill  # noqa: PLC0415

    b = args.batch
    shape = (b, 3, 227, 227)
    print(f"fillers on the hot path, batch {b}, {describe()}")
    print(f"  compiled refill: {'yes' if counter_rng.compiled_available() else 'no (the NumPy twin runs)'}", flush=True)
    dummy_net, dummy = _layer('layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: B '
                              'dim: 3 dim: 227 dim: 227 } data_filler { type: "gaussian" std: 1 } } }'
                              .replace("B", str(b)), caffe_pb2.TEST)
    drop_net, drop = _layer('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: B dim: 4096 } } }'
                            'layer { name: "drop" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.5 } }'
                            .replace("B", str(b)), caffe_pb2.TRAIN)
    dummy_tops, drop_b, drop_t = dummy_net.top_vecs[0], drop_net.bottom_vecs[1], drop_net.top_vecs[1]
    drop_b[0].data[...] = np.random.default_rng(0).standard_normal(drop_b[0].shape).astype(np.float32)
    gaussian = caffe_pb2.FillerParameter(type="gaussian", std=1)
    rng = np.random.default_rng(0)
    fns: dict[str, Callable[[], Any]] = {
        "refill": lambda: dummy.forward([], dummy_tops),
        "before": lambda: fill(shape, gaussian, rng).astype(np.float32),
        "dropout": lambda: drop.forward(drop_b, drop_t),
    }
    try:
        import torch  # noqa: PLC0415 - benchmark-only dependency
        from torch.nn import functional as F  # noqa: N812, PLC0415
    except ImportError:
        torch = None
        print("  PyTorch baseline skipped: torch is not installed (pip install -e .[bench])")
    if torch is not None:
        buf = torch.empty(shape)
        tx = torch.from_numpy(drop_b[0].data.copy())
        fns.update({"randn": lambda: torch.randn(shape), "normal_": lambda: buf.normal_(),
                    "F.dropout": lambda: F.dropout(tx, 0.5, training=True)})
    best = _interleaved(max(1, args.rounds), fns)
    dummy_net.close()
    drop_net.close()
    size = f"{b}x3x227x227"
    line = f"  DummyData gaussian refill {size}: ours {best['refill']:.2f} ms (before: fill + astype {best['before']:.2f} ms)"
    if torch is not None:
        line += (f" | torch.randn {best['randn']:.2f} ms, in-place normal_ {best['normal_']:.2f} ms "
                 f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(line)
    line = f"  Dropout TRAIN forward {b}x4096 (mask + scale): ours {best['dropout']:.3f} ms"
    if torch is not None:
        line += f" | F.dropout {best['F.dropout']:.3f} ms"
    print(line)
    print(f"  minimum of {args.rounds} interleaved rounds; command: python -m benchmarks.bench_fillers "
          f"--rounds {args.rounds} --batch {b}")
    if torch is None:
        print("RATIO fillers_refill: skipped (torch missing)")
        print("RATIO fillers_dropout: skipped (torch missing)")
        return
    print(f"RATIO fillers_refill: {best['refill'] / best['randn']:.2f} (target <= 1.0, ours / torch.randn)")
    print(f"RATIO fillers_dropout: {best['dropout'] / best['F.dropout']:.2f} (target <= 1.0, ours / F.dropout)")


if __name__ == "__main__":
    main()
