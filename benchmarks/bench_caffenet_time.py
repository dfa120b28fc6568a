"""CaffeNet forward+backward: `trainer time` against the same network in PyTorch, same machine, same run.

Workload: Caffe's reference CaffeNet (models/caffenet/deploy.prototxt, 227×227×3,
60.9M params) in the TRAIN phase (dropout on), a full training step without the
solver update: forward, then backward for every layer and param. Ours runs as a
user runs it (`trainer time --batch-size B --phase TRAIN`, a subprocess); the
baseline is torch.nn with the same layers (ceil-mode max pooling, LRN with
Caffe's constants, grouped convolutions, cross-entropy loss), timed per step
in its own subprocess so the two never share threads. Both use every core
the machine gives them (the BLAS / torch default).

CPU figure: ms per image; RATIO = ours / PyTorch (target <= 1.2, the worse of the
batch sizes). With ``--rounds R`` ours and PyTorch alternate R times per batch size
and the ratio is the median of the rounds: on a shared machine the load changes
between two subprocesses, so a single pair can be off by a factor of 2. With CuPy and a CUDA device, and torch built with CUDA, the GPU
figure is images/s and its ratio ours / PyTorch (target >= 0.5).

Each CPU batch size also prints our last round's largest layers, and the CPU part ends with float32
GEMM GFLOP/s of NumPy and ``torch.mm`` (``benchmarks.machine.gemm_line``): on a machine kind where
the ratio misses, those say whether the GEMMs or what lies around them take the time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "caffenet" / "deploy.prototxt"


def _torch_worker(batch: int, iterations: int, device: str) -> None:
    """Time PyTorch CaffeNet training steps; prints one JSON line."""
    import torch  # noqa: PLC0415 - benchmark-only dependency
    from torch import nn

    def conv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, groups: int = 1) -> nn.Module:
        return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups)

    model = nn.Sequential(
        conv(3, 96, 11, stride=4), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0),
        conv(96, 256, 5, pad=2, groups=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0),
        conv(256, 384, 3, pad=1), nn.ReLU(inplace=True),
        conv(384, 384, 3, pad=1, groups=2), nn.ReLU(inplace=True),
        conv(384, 256, 3, pad=1, groups=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(4096, 1000),
    ).to(device)
    model.train()
    x = torch.randn(batch, 3, 227, 227, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        model.zero_grad(set_to_none=False)
        loss_fn(model(x), y).backward()
        if device != "cpu":
            torch.cuda.synchronize()

    step()
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    ms = (time.perf_counter() - started) * 1000.0 / iterations
    print(json.dumps({"ms_per_iter": ms, "threads": torch.get_num_threads(), "version": torch.__version__}))


def _run_torch(batch: int, iterations: int, device: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_caffenet_time", "--torch-worker",
                          str(batch), str(iterations), device], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"PyTorch baseline failed (install it with `pip install torch==2.13.0`, "
                         f"as `make bench` does):\n{res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _run_ours(batch: int, iterations: int, device: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "time.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", "cli.trainer_main", "time", "--model", str(MODEL),
               "--batch-size", str(batch), "--iterations", str(iterations), "--phase", "TRAIN",
               "--device", device, "--report", str(report)]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise SystemExit(f"trainer time failed:\n{res.stderr.strip()[-2000:]}")
        data = json.loads(report.read_text())
    data["ms_per_iter"] = data["total_ms"] / data["iterations"]
    data["command"] = "trainer " + " ".join(cmd[cmd.index("time"):-2])
    return data


def _gpu_possible() -> bool:
    from trainer.backend import gpu_available  # noqa: PLC0415
    if not gpu_available():
        return False
    probe = subprocess.run([sys.executable, "-c", "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"],
                           capture_output=True)
    return probe.returncode == 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench_caffenet_time", description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="16,64", help="batch sizes (default 16,64)")
    p.add_argument("--iterations", type=int, default=2, help="timed CPU iterations per batch size (default 2)")
    p.add_argument("--rounds", type=int, default=2,
                   help="alternate ours / PyTorch this many times per batch size; the median ratio counts (default 2)")
    p.add_argument("--gpu-iterations", type=int, default=20, help="timed GPU iterations (default 20)")
    p.add_argument("--gpu-only", action="store_true", help="skip the CPU half (a GPU machine's check)")
    p.add_argument("--torch-worker", nargs=3, metavar=("BATCH", "ITERS", "DEVICE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.torch_worker:
        b, n, dev = args.torch_worker
        _torch_worker(int(b), int(n), dev)
        return
    batches = [int(b) for b in args.batches.split(",") if b]
    from benchmarks.layer_profile import largest_layers  # noqa: PLC0415
    from benchmarks.machine import describe, gemm_line  # noqa: PLC0415
    print(f"CaffeNet 227x227 forward+backward (TRAIN phase), {describe()}")
    ratios = []
    for b in batches if not args.gpu_only else []:
        per_round = []
        for r in range(max(1, args.rounds)):
            ours = _run_ours(b, args.iterations, "cpu")
            base = _run_torch(b, args.iterations, "cpu")
            o, t = ours["ms_per_iter"] / b, base["ms_per_iter"] / b
            per_round.append(o / t)
            print(f"  CPU batch {b:3d} round {r + 1}: ours {o:8.2f} ms/image (fwd {ours['forward_ms'] / b:.2f} + bwd "
                  f"{ours['backward_ms'] / b:.2f}) | PyTorch {base['version']} ({base['threads']} threads) "
                  f"{t:8.2f} ms/image | ratio {o / t:.2f}", flush=True)
        ratios.append(statistics.median(per_round))
        print(f"  CPU batch {b:3d}: median ratio {ratios[-1]:.2f} over {len(per_round)} round(s)")
        print(f"  CPU batch {b:3d}, ours in the last round: {largest_layers(ours)}")
    if ratios:
        print(f"  command: {ours['command']} (batch sizes {args.batches}, {args.iterations} iterations, "
              f"{args.rounds} rounds)")
        print(f"  {gemm_line()}")
    if _gpu_possible():
        gratios = []
        for b in batches:
            ours = _run_ours(b, args.gpu_iterations, "gpu")
            base = _run_torch(b, args.gpu_iterations, "cuda")
            o, t = b * 1000.0 / ours["ms_per_iter"], b * 1000.0 / base["ms_per_iter"]
            gratios.append(o / t)
            print(f"  GPU batch {b:3d}: ours {o:8.1f} images/s | PyTorch {t:8.1f} images/s | ratio {o / t:.2f}")
        print(f"RATIO caffenet_time_gpu: {min(gratios):.2f} (target >= 0.5)")
    else:
        print("  GPU: skipped (needs CuPy with a CUDA device and a CUDA build of torch)")
    if ratios:
        print(f"RATIO caffenet_time: {max(ratios):.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
