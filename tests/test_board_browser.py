"""The board in a real headless browser (Debian's chromium over the DevTools protocol).

Skipped, with the reason, where chromium is not installed (`make test` installs it with apt-get
when it runs as root). Asserts the page loads with no JavaScript error, the run table lists the
run, the curve's SVG has the log's points and gains the new ones while the log grows (no reload),
and writes a screenshot as a test artefact (test-artifacts/board.png).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.board_fixtures import loss_points, start_run, write_iterations
from tests.cdp import Browser, find_chromium

from trainer.board.server import make_app

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("DATAKIT_TEST_ARTIFACTS", ROOT / "test-artifacts"))

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="chromium is not installed (apt-get install chromium; make test installs it "
                                       "when run as root)")

POINTS = "document.querySelector('#detail svg.loss polyline.series[data-series=\"train loss\"]')?.dataset.n"


async def test_board_page_in_chromium(tmp_path, aiohttp_server):
    run_dir = tmp_path / "lenet"
    log = start_run(run_dir, iterations=200)
    (run_dir / "lenet_train_test.prototxt").write_bytes((ROOT / "models/lenet/lenet_train_test.prototxt").read_bytes())
    server = await aiohttp_server(make_app(tmp_path, poll=0.2))
    url = f"http://127.0.0.1:{server.port}/"
    try:
        async with Browser() as page:
            await page.goto(url)
            await page.wait_for("document.querySelectorAll('#run-table tbody tr').length === 1")
            row = await page.evaluate("document.querySelector('#run-table tbody tr').innerText")
            assert "lenet/train.log" in row and "running" in row
            await page.evaluate("window.__notReloaded = true; document.querySelector('#run-table tbody tr').click()")
            n = await page.wait_for(POINTS)
            assert int(n) == loss_points(200)
            coords = await page.evaluate(POINTS.replace("dataset.n", "getAttribute('points')"))
            assert len(coords.split()) == loss_points(200)
            acc = await page.evaluate("document.querySelector('#detail svg.accuracy polyline.series').dataset.n")
            assert int(acc) == 4   # test passes at 0, 50, 100, 150
            # the log grows: the curve follows through the server's events, without a reload
            write_iterations(log, 200, 300)
            await page.wait_for(f"({POINTS}) == {loss_points(300)}", timeout=20)
            assert await page.evaluate("window.__notReloaded === true")
            await page.wait_for("document.querySelector('#detail .drawing img')?.complete")
            await page.evaluate("window.scrollTo(0, 0)")
            shot = await page.screenshot(ARTIFACTS / "board.png")
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
            assert page.errors == [], json.dumps(page.errors, indent=1)
    finally:
        log.close()
