"""LeNet training speed: `trainer fit` from an LMDB against PyTorch's LeNet in the same run (iterations/s).

Workload: Caffe's LeNet solver and net (models/lenet: batch 64, SGD momentum 0.9,
weight decay 5e-4, "inv" learning rate) on the real MNIST converted to LMDB by
`datakit convert --gray` (made once by bench_lenet_mnist.prepare, reused with
``--workdir``). Ours runs as a user runs it: `trainer fit --solver S --device cpu`
in a subprocess, with the solver's max_iter shortened and no test passes;
iterations/s are read from the log's own timestamps between iteration 100 and
the last displayed one, so start-up and the first (warm-up) iterations do not
count. Baseline: the same network, loss, solver and learning-rate policy in
torch.nn / torch.optim.SGD on the MNIST training set held as tensors in memory
(no data loader: a lighter input path than ours), timed after 100 warm-up
iterations, in its own subprocess. Both use every core (BLAS / torch default).
The two alternate ``--rounds`` times and the median ratio counts.

Closing lines (``--no-profile`` skips them): our step layer by layer (`trainer time` on the same
LMDB) and float32 GEMM GFLOP/s of NumPy and ``torch.mm`` at the layers' shapes, so that a machine
kind where the ratio misses says where the time goes and whether both sides' GEMMs are fast there.

RATIO = ours / PyTorch iterations/s (target >= 0.8). History: real Caffe
(`caffe train`, CPU) ran this solver at 24-25 iterations/s on the 2-vCPU
AVX-512 machine where PyTorch ran 80-84 (issue 16).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 100
_LINE = re.compile(r"^I(\d{4}) (\d\d:\d\d:\d\d\.\d+) .*\] Iteration (\d+), loss = ")


def _torch_worker(mnist_dir: str, iterations: int) -> None:
    """Time PyTorch LeNet training steps on in-memory MNIST; prints one JSON line."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415 - benchmark-only dependency
    from torch import nn  # noqa: PLC0415

    from datakit.idx import read_mnist  # noqa: PLC0415
    base = Path(mnist_dir)
    images, labels = read_mnist(base / "train-images-idx3-ubyte.gz", base / "train-labels-idx1-ubyte.gz")
    x_all = torch.from_numpy(images.astype(np.float32)[:, None] * 0.00390625)
    y_all = torch.from_numpy(labels.astype(np.int64))
    torch.manual_seed(1701)
    model = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2), nn.Flatten(),
        nn.Linear(800, 500), nn.ReLU(inplace=True), nn.Linear(500, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    loss_fn = nn.CrossEntropyLoss()
    n = len(x_all)

    def step(it: int) -> None:
        lo = (it * 64) % (n - 64)
        for g in opt.param_groups:  # Caffe's "inv" policy: base_lr * (1 + gamma * iter) ^ -power
            g["lr"] = 0.01 * (1.0 + 0.0001 * it) ** -0.75
        opt.zero_grad(set_to_none=False)
        loss_fn(model(x_all[lo:lo + 64]), y_all[lo:lo + 64]).backward()
        opt.step()

    for it in range(WARMUP):
        step(it)
    started = time.perf_counter()
    for it in range(WARMUP, WARMUP + iterations):
        step(it)
    rate = iterations / (time.perf_counter() - started)
    print(json.dumps({"iter_per_s": rate, "threads": torch.get_num_threads(), "version": torch.__version__}))


def _run_torch(mnist_dir: Path, iterations: int) -> dict:
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_lenet_fit", "--torch-worker", str(mnist_dir),
                          str(iterations)], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"PyTorch baseline failed (install it with `pip install torch==2.13.0`, "
                         f"as `make bench` does):\n{res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _stamp(month_day: str, clock: str) -> float:
    t = dt.datetime.strptime(f"2000{month_day} {clock}", "%Y%m%d %H:%M:%S.%f")
    return t.timestamp()


@contextlib.contextmanager
def _run_dir(work: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A scratch folder holding links to ``work``'s LMDBs, and the environment our subprocesses run in."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        for db in ("mnist_train_lmdb", "mnist_test_lmdb"):
            (run_dir / db).symlink_to(work / db)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        yield run_dir, env


def _run_ours(work: Path, iterations: int) -> dict:
    """`trainer fit` on a copy of the LeNet solver: max_iter shortened, no tests; iter/s from the log."""
    max_iter = WARMUP + iterations
    solver = (ROOT / "models/lenet/lenet_solver.prototxt").read_text()
    solver = re.sub(r"max_iter: \d+", f"max_iter: {max_iter + 1}", solver)
    solver = re.sub(r"test_interval: \d+", f"test_interval: {10 * max_iter}", solver)
    solver = re.sub(r"snapshot: \d+", f"snapshot: {10 * max_iter}", solver)
    solver = re.sub(r"display: \d+", "display: 50", solver)
    solver = solver.replace('net: "lenet_train_test.prototxt"', f'net: "{ROOT / "models/lenet/lenet_train_test.prototxt"}"')
    with _run_dir(work) as (run_dir, env):
        (run_dir / "solver.prototxt").write_text(solver + "test_initialization: false\n")
        cmd = [sys.executable, "-m", "cli.trainer_main", "fit", "--solver", "solver.prototxt", "--device", "cpu",
               "--log", "fit.log"]
        started = time.perf_counter()
        res = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
        if res.returncode != 0:
            raise SystemExit(f"trainer fit failed:\n{res.stderr.strip()[-2000:]}")
        stamps = {}
        for line in (run_dir / "fit.log").read_text().splitlines():
            m = _LINE.match(line)
            if m:
                stamps[int(m.group(3))] = _stamp(m.group(1), m.group(2))
    last = max(i for i in stamps if i <= max_iter)
    if WARMUP not in stamps or last <= WARMUP:
        raise SystemExit(f"trainer fit's log has no iteration lines to time (found {sorted(stamps)})")
    return {"iter_per_s": (last - WARMUP) / (stamps[last] - stamps[WARMUP]), "wall_s": wall,
            "command": "trainer " + " ".join(cmd[cmd.index("fit"):]) + f" (max_iter {max_iter + 1}, no tests)"}


def _profile_ours(work: Path, iterations: int = 200) -> str:
    """Where our step goes: `trainer time` on the LeNet train net (its Data layer reads the same LMDB), top layers."""
    with _run_dir(work) as (run_dir, env):
        res = subprocess.run([sys.executable, "-m", "cli.trainer_main", "time", "--model",
                              str(ROOT / "models/lenet/lenet_train_test.prototxt"), "--iterations", str(iterations),
                              "--device", "cpu", "--no-progress", "--report", "report.json"],
                             cwd=run_dir, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            return f"(trainer time failed: {res.stderr.strip()[-300:]})"
        report = json.loads((run_dir / "report.json").read_text())
    from benchmarks.layer_profile import largest_layers  # noqa: PLC0415
    return f"{largest_layers(report)} (trainer time, {iterations} iterations)"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench_lenet_fit", description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=400, help="timed iterations after 100 warm-up ones (default 400)")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternate ours / PyTorch this many times (default 3: a median of an odd count)")
    p.add_argument("--threads", type=int, default=0,
                   help="limit both sides to N threads (BLAS, OpenMP, torch); 0: their defaults (every core)")
    p.add_argument("--workdir", help="folder holding (or to receive) mnist_train_lmdb and mnist_test_lmdb")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the closing layer-by-layer profile of ours and the GEMM speeds of NumPy and PyTorch")
    p.add_argument("--torch-worker", nargs=2, metavar=("MNIST_DIR", "ITERS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads > 0:  # read by OpenBLAS, MKL and OpenMP when the subprocesses load them
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    if args.torch_worker:
        _torch_worker(args.torch_worker[0], int(args.torch_worker[1]))
        return
    from benchmarks.bench_lenet_mnist import prepare, shared_mnist  # noqa: PLC0415
    from benchmarks.machine import describe, gemm_line  # noqa: PLC0415
    tmp = None if args.workdir else tempfile.TemporaryDirectory()
    work = Path(args.workdir or tmp.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        prep = prepare(work)
        print(f"LeNet MNIST training, batch 64, {describe()}")
        print(f"  LMDBs ready in {work} ({prep:.1f} s)")
        ratios = []
        for r in range(max(1, args.rounds)):
            ours = _run_ours(work, args.iterations)
            base = _run_torch(shared_mnist(), args.iterations)
            ratios.append(ours["iter_per_s"] / base["iter_per_s"])
            print(f"  round {r + 1}: ours {ours['iter_per_s']:6.1f} iter/s (run {ours['wall_s']:.1f} s with start-up) "
                  f"| PyTorch {base['version']} ({base['threads']} threads) {base['iter_per_s']:6.1f} iter/s "
                  f"| ratio {ratios[-1]:.2f}", flush=True)
        print(f"  command: {ours['command']}; {args.iterations} timed iterations after {WARMUP}"
              + (f"; --threads {args.threads}" if args.threads > 0 else ""))
        print("  history: real Caffe (caffe train, CPU) 24-25 iter/s where PyTorch ran 80-84 (issue 16)")
        if args.profile:  # for a machine where the ratio misses: which layers, and whether the GEMMs are fast here
            print(f"  ours, layer by layer: {_profile_ours(work)}")
            print(f"  {gemm_line()}")
        print(f"RATIO lenet_fit: {statistics.median(ratios):.2f} (target >= 0.8)")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
