"""Make the README's screenshot of `trainer board` during a run (needs chromium and ../shared/data).

    python -m scripts.board_screenshot docs/board.png

Builds a folder with LeNet training on a slice of MNIST (`trainer fit` in the background), the
two MNIST databases and a real 2014 Caffe log of the transfer study, serves `trainer board` on
it, opens the running run in headless chromium (tests/cdp.py) and saves the page as a PNG.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DATAKIT_SHARED", ROOT.parent / "shared")) / "data"


def _mnist_lmdb(folder: Path, images: str, labels: str, count: int) -> None:
    from datakit.datum import encode_datum
    from datakit.db.lmdb_backend import LmdbWriter
    from datakit.idx import read_mnist

    x, y = read_mnist(SHARED / "mnist" / images, SHARED / "mnist" / labels)
    writer = LmdbWriter(folder)
    writer.write([(f"{i:08d}".encode(), encode_datum(x[i][None], int(y[i]))) for i in range(count)])
    writer.close()


def build(folder: Path) -> subprocess.Popen:
    run = folder / "lenet"
    run.mkdir(parents=True)
    _mnist_lmdb(run / "mnist_train_lmdb", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 6000)
    _mnist_lmdb(run / "mnist_test_lmdb", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 1000)
    shutil.copy(ROOT / "models/lenet/lenet_train_test.prototxt", run)
    solver = (ROOT / "models/lenet/lenet_solver.prototxt").read_text()
    solver = (solver.replace("test_iter: 100", "test_iter: 10").replace("test_interval: 500", "test_interval: 50")
              .replace("display: 100", "display: 10").replace("snapshot: 5000", "snapshot: 0"))
    (run / "lenet_solver.prototxt").write_text(solver)
    caffe = SHARED / "caffe_logs" / "half0A"
    (folder / "transfer" / "half0A").mkdir(parents=True)
    for log in sorted(caffe.glob("*.gz"))[:1]:
        shutil.copy2(log, folder / "transfer" / "half0A" / log.name)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "cli.trainer_main", "fit", "--solver", "lenet_solver.prototxt",
                             "--device", "cpu", "--quiet"], cwd=run, env=env)


async def shoot(folder: Path, out: Path, seconds: float) -> None:
    from aiohttp import web

    from tests.cdp import Browser
    from trainer.board.server import make_app

    runner = web.AppRunner(make_app(folder, poll=0.5))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        await asyncio.sleep(seconds)
        async with Browser() as page:
            await page.send("Emulation.setDeviceMetricsOverride", width=1200, height=860, deviceScaleFactor=1, mobile=False)
            await page.goto(f"http://127.0.0.1:{port}/#run=lenet%2Flenet.log")
            await page.wait_for("!!document.querySelector('#detail svg.loss polyline.series')", timeout=60)
            await asyncio.sleep(1.0)
            shot = await page.send("Page.captureScreenshot", format="png")
            import base64
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(shot["data"]))
            assert page.errors == [], page.errors
    finally:
        await runner.cleanup()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "board.png").resolve()
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    with tempfile.TemporaryDirectory(prefix="board-shot-") as tmp:
        folder = Path(tmp) / "experiments"
        fit = build(folder)
        try:
            asyncio.run(shoot(folder, out, seconds))
        finally:
            fit.terminate()
            fit.wait()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
