"""Before/after for assemble on a busy machine: two source trees, interleaved runs, one mirror.

bench_assemble's own ratio is against a Caffe-like pool; when comparing two
versions of datakit on a machine other work is loading, single runs minutes
apart differ more than the versions do. This runs bench_assemble's workload
(2000 demo images from a local mirror process, 50 ms per response, default
options) with each tree in turn, alternating which goes first, and prints
the median of each and their ratio (new / old; 1.0 = as fast), with the
client's CPU time per image, which the machine's load moves less.

    git archive <old-commit> | tar -x -C /tmp/old
    python -m benchmarks.ab_assemble --old /tmp/old [--new .] [--pairs 6]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from datakit.manifest import open_manifest, select_rows
from datakit.mirror import synthetic_image
from scripts.mirror_process import mirror_subprocess

_ONE_RUN = """
import json, resource, sys, time
from pathlib import Path
from datakit.assemble import AssembleConfig, assemble
import tqdm  # both trees import it when a run starts
try:  # a tree whose package loads its modules on first use: load them before the clock starts, as the other did
    from datakit.assemble import finish, plan, run_partitions
except ImportError:
    pass
def cpu():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime
t0, c0 = time.perf_counter(), cpu()
r = assemble(AssembleConfig(manifest="demo", out=Path(sys.argv[2]), images=int(sys.argv[3]), seed=1701,
                            mirror=sys.argv[1], progress=False), log=lambda s: None)
assert r.succeeded == int(sys.argv[3]), r.succeeded
print(json.dumps([r.succeeded / (time.perf_counter() - t0), 1000 * (cpu() - c0) / r.succeeded]))
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="source tree of the version before")
    ap.add_argument("--new", default=str(Path(__file__).resolve().parents[1]), help="source tree after (default: this one)")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ab-assemble-"))
    try:
        _, rows, _ = open_manifest("demo")
        served = work / "served"
        served.mkdir()
        for r in select_rows(rows, images=args.images, seed=1701):
            path = urlsplit(r.url).path
            (served / path.rsplit("/", 1)[-1]).write_bytes(synthetic_image(path, r.label, 0))
        rates: dict[str, list[float]] = {"old": [], "new": []}
        cpu_ms: dict[str, list[float]] = {"old": [], "new": []}
        trees = {"old": str(Path(args.old).resolve()), "new": str(Path(args.new).resolve())}
        with mirror_subprocess(["--manifest", "demo", "--directory", str(served),
                                "--latency", str(args.latency_ms)]) as url:
            for i in range(args.pairs):
                for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
                    out = work / f"{name}-{i}"
                    done = subprocess.run([sys.executable, "-c", _ONE_RUN, url, str(out), str(args.images)],
                                          env=dict(os.environ, PYTHONPATH=trees[name]), cwd=work,
                                          capture_output=True, text=True, check=True)
                    rate, ms = json.loads(done.stdout)
                    rates[name].append(rate)
                    cpu_ms[name].append(ms)
                    shutil.rmtree(out)
                    print(f"{name}: {rate:7.1f} images/s, {ms:.2f} ms of client CPU per image  "
                          f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        old, new = statistics.median(rates["old"]), statistics.median(rates["new"])
        print(f"median old {old:.1f} images/s, new {new:.1f} images/s over {args.pairs} pairs; client CPU per "
              f"image old {statistics.median(cpu_ms['old']):.2f} ms, new {statistics.median(cpu_ms['new']):.2f} ms")
        print(f"RATIO assemble new/old: {new / old:.2f} (target >= 1.0, within the noise of a shared machine)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
