"""`make demo`: the whole user story, offline, on the bundled demo manifest.

Each step runs the installed command exactly as a user would type it, and is
printed first, so the demo doubles as a worked example:

1. a local mirror plays Flickr (`datakit mirror`, synthetic per-style images),
2. `datakit assemble` downloads 2,000 images from it and writes train/test lists,
3. `datakit check-list`, `datakit convert` (LMDB, 72x72) and `datakit mean`,
4. `trainer fit` trains DemoNet from scratch,
5. `trainer fit --weights` fine-tunes it with a renamed last layer, and the
   same solver runs from scratch to show what the copied layers bring,
6. `trainer test` reports test accuracy, `trainer classify` names the style of
   a few test images, `trainer plot` draws demo-out/curves.png.

Everything is written under demo-out/; running the demo again reuses what is
already there (downloads are skipped, databases rebuilt, training rerun).
`python -m scripts.demo --device gpu` trains, tests and classifies on CuPy
(the demo solvers say solver_mode CPU, which `--device auto` follows).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from datakit.manifest import load_recipe
from scripts.mirror_process import mirror_subprocess

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo-out"
MODELS = ROOT / "models" / "demo"
CHANCE = 1 / 5  # the demo manifest has 5 styles


def run(*args: str, cwd: Path = ROOT, capture: bool = False) -> str:
    """Run one command, echoing it like a shell would; stop the demo if it fails."""
    shown = " ".join(shlex.quote(a) for a in args)
    print(f"\n$ {'(cd ' + os.path.relpath(cwd, ROOT) + ') ' if cwd != ROOT else ''}{shown}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, text=True, stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        print(f"demo: step failed with exit status {result.returncode}: {shown}", file=sys.stderr)
        raise SystemExit(result.returncode)
    if capture:
        print(result.stdout, end="")
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)
    return result.stdout if capture else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo.py", description="the whole datakit story on the bundled demo")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="where trainer fit/test/classify run (default: as the solvers say, CPU)")
    chosen = parser.parse_args(argv).device
    device = () if chosen == "auto" else ("--device", chosen)  # the printed commands stay as a user types them
    started = time.perf_counter()
    OUT.mkdir(exist_ok=True)
    data = OUT / "data"

    print("== 1-2. assemble 2,000 images from a local mirror of the demo manifest")
    with mirror_subprocess(["--manifest", "demo"]) as url:
        run("datakit", "assemble", "--manifest", "demo", "--mirror", url, "--out", str(data),
            "--images", "2000", "--seed", "1701", "--report", str(OUT / "assemble_report.json"))

    print("\n== 3. check the lists, convert them to LMDB, compute the mean")
    for split in ("train", "test"):
        run("datakit", "check-list", str(data / f"{split}.txt"), "--root", str(data))
    for split in ("train", "test"):
        run("datakit", "convert", str(data), str(data / f"{split}.txt"), str(OUT / f"{split}_lmdb"),
            "--resize-height", "72", "--resize-width", "72", "--shuffle", "--seed", "1701", "--overwrite")
    run("datakit", "mean", str(OUT / "train_lmdb"), str(OUT / "mean.binaryproto"), "--npy")
    run("datakit", "inspect", str(OUT / "train_lmdb"), "--contact-sheet", str(OUT / "train_samples.png"))

    print("\n== 4. train DemoNet from scratch (paths in the prototxts are relative to demo-out/)")
    snapshots = OUT / "snapshots"
    if snapshots.exists():
        shutil.rmtree(snapshots)  # a rerun trains afresh instead of appending to old logs
    run("trainer", "fit", "--solver", str(MODELS / "demo_solver.prototxt"), *device, cwd=OUT)

    print("\n== 5. fine-tune: fc_style renamed to fc_style_ft starts fresh, the rest is copied")
    base = newest(snapshots, "demo_iter_*.caffemodel")
    run("trainer", "fit", "--solver", str(MODELS / "demo_finetune_solver.prototxt"),
        "--weights", str(base.relative_to(OUT)), *device, cwd=OUT)

    print("\n   the same solver from scratch (no --weights), to see what the copied layers bring")
    run("trainer", "fit", "--solver", str(MODELS / "demo_scratch_solver.prototxt"), *device, cwd=OUT)
    print(transfer_table(snapshots / "demo_finetune.log", snapshots / "demo_scratch.log"))

    print("\n== 6. test the fine-tuned model and plot the curves")
    tuned = newest(snapshots, "demo_finetune_iter_*.caffemodel")
    output = run("trainer", "test", "--model", str(MODELS / "demo_finetune_train_val.prototxt"),
                 "--weights", str(tuned.relative_to(OUT)), "--iterations", "7", *device, cwd=OUT, capture=True)
    names = data / "labels.txt"  # the class names assemble wrote beside the lists
    samples = [line.split()[0] for line in (data / "test.txt").read_text().splitlines()[:3]]
    run("trainer", "classify", *(str(Path("data") / s) for s in samples),
        "--model", str(MODELS / "demo_finetune_deploy.prototxt"), "--weights", str(tuned.relative_to(OUT)),
        "--train-net", str(MODELS / "demo_finetune_train_val.prototxt"), "--image-dims", "72,72",
        "--labels", str(names.relative_to(OUT)), "--top-k", "2", *device, cwd=OUT)
    print("  (true styles: " + ", ".join(f"{p}: {load_recipe('demo').label_names[int(lab)]}" for p, lab in
                                        (line.split() for line in (data / "test.txt").read_text().splitlines()[:3]))
          + ")")
    logs = sorted(str(p.relative_to(OUT)) for p in snapshots.glob("*.log"))
    run("trainer", "plot", *logs, "-o", "curves.png", cwd=OUT)

    match = re.search(r"^accuracy = ([0-9.]+)", output, re.MULTILINE)
    if not match:
        print("demo: trainer test printed no accuracy line", file=sys.stderr)
        return 1
    accuracy = float(match.group(1))
    print(f"\nDemo finished in {time.perf_counter() - started:.0f} s: test accuracy {accuracy:.3f} "
          f"(chance {CHANCE:.2f}); curves in {OUT / 'curves.png'}")
    if accuracy < 2 * CHANCE:
        print("demo: the fine-tuned net did not learn the styles (accuracy under twice chance)", file=sys.stderr)
        return 1
    return 0


def transfer_table(tuned_log: Path, scratch_log: Path) -> str:
    """Test accuracy at each test of the two runs, side by side, from their Caffe-format logs."""
    from trainer.curves import parse_log  # noqa: PLC0415 - after the runs, as a user would

    runs = {name: dict(parse_log(path)[-1].test.get("accuracy", []))
            for name, path in (("fine-tuned", tuned_log), ("from scratch", scratch_log))}
    iterations = sorted(set().union(*runs.values()))
    lines = ["  test accuracy  " + "".join(f"{'iteration ' + str(it):>15}" for it in iterations)]
    for name, acc in runs.items():
        lines.append(f"  {name:<15}" + "".join(f"{acc.get(it, float('nan')):>15.3f}" for it in iterations))
    return "\n".join(lines)


def newest(folder: Path, pattern: str) -> Path:
    """The snapshot with the highest iteration number."""
    found = sorted(folder.glob(pattern), key=lambda p: int(re.search(r"_iter_(\d+)", p.name).group(1)))
    if not found:
        print(f"demo: no snapshot matching {pattern} in {folder}", file=sys.stderr)
        raise SystemExit(1)
    return found[-1]


if __name__ == "__main__":
    raise SystemExit(main())
