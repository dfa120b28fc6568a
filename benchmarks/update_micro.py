"""One solver update over LeNet's and CaffeNet's weights: NumPy lines, compiled loop, torch.optim, one process.

Not part of `make bench` (no target): the update table of benchmarks/RESULTS.md (issue 16). The
update is what `trainer fit` adds to `trainer time`'s forward + backward in every iteration; for a
net of CaffeNet's size it is a pass over 244 MB of weights, its history and its gradient.
Usage: ``python -m benchmarks.update_micro [--rules SGD,Adam] [--rounds N]``; needs torch (the
`bench` extra). The three take turns within each round; prints the median and minimum ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

#: learnable blob shapes (weights, biases) of the two nets the issue-16 benchmarks time
NETS = {
    "LeNet": [(20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (500, 800), (500,), (10, 500), (10,)],
    "CaffeNet": [(96, 3, 11, 11), (96,), (256, 48, 5, 5), (256,), (384, 256, 3, 3), (384,), (384, 192, 3, 3),
                 (384,), (256, 192, 3, 3), (256,), (4096, 9216), (4096,), (4096, 4096), (4096,), (1000, 4096),
                 (1000,)],
}
#: Caffe's solver fields for each rule and the torch.optim twin with the same settings
RULES = {
    "SGD": ({"momentum": 0.9}, lambda ps: __import__("torch").optim.SGD(ps, lr=0.01, momentum=0.9,
                                                                           weight_decay=5e-4)),
    "Adam": ({"momentum": 0.9, "momentum2": 0.999, "delta": 1e-8},
             lambda ps: __import__("torch").optim.Adam(ps, lr=0.01, betas=(0.9, 0.999), eps=1e-8,
                                                       weight_decay=5e-4)),
}


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def main(argv: list[str] | None = None) -> None:
    import torch  # noqa: PLC0415 - benchmark-only dependency

    from benchmarks.machine import describe  # noqa: PLC0415
    from datakit.formats import caffe_pb2  # noqa: PLC0415
    from trainer import kernels  # noqa: PLC0415
    from trainer.updates import make_rule  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="update_micro", description=__doc__.splitlines()[0])
    p.add_argument("--rules", default="SGD,Adam", help="comma-separated update rules (of: SGD, Adam)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds after one untimed (default 7)")
    args = p.parse_args(argv)
    print(f"one update, weight decay 5e-4; {describe()}; torch {torch.__version__} ({torch.get_num_threads()} threads)")
    rng = np.random.default_rng(0)
    for net, shapes in NETS.items():
        blobs = [SimpleNamespace(data=rng.standard_normal(s, dtype=np.float32), diff=np.empty(s, np.float32),
                                 lr_mult=1.0, decay_mult=1.0) for s in shapes]
        size = sum(b.data.size for b in blobs)
        for name in args.rules.split(","):
            fields, torch_rule = RULES[name]
            rule = make_rule(caffe_pb2.SolverParameter(type=name, weight_decay=5e-4, **fields), blobs)
            tparams = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
            for t in tparams:
                t.grad = torch.randn(t.shape) * 0.01
            topt = torch_rule(tparams)
            times: dict[str, list[float]] = {"NumPy lines": [], "compiled": [], "torch.optim": []}
            for it in range(args.rounds + 1):
                for b in blobs:
                    b.diff[...] = 0.01
                for label in times:
                    if label == "torch.optim":
                        ms = _time(topt.step)
                    else:
                        prev = kernels.use_compiled(label == "compiled")
                        try:
                            ms = _time(lambda: rule.apply(0.01, it))  # noqa: B023 - called at once
                        finally:
                            kernels.use_compiled(prev)
                    if it:
                        times[label].append(ms)
            print(f"  {net} ({size / 1e6:.2f} M weights), {name}: " + "; ".join(
                f"{label} {statistics.median(v):.2f} ms (min {min(v):.2f})" for label, v in times.items()))


if __name__ == "__main__":
    main()
