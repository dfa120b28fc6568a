"""`trainer board`: every endpoint through aiohttp's test client (a real server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.board_fixtures import loss_points, start_run, write_iterations

from trainer.board.server import make_app

ROOT = Path(__file__).resolve().parents[1]


def polyline_counts(svg: str) -> dict[str, int]:
    """data-series -> number of points actually in the points attribute."""
    out = {}
    for m in re.finditer(r'<polyline class="series" data-series="([^"]*)" data-n="(\d+)" points="([^"]*)"', svg):
        pts = m.group(3).split()
        assert len(pts) == int(m.group(2))
        out[m.group(1)] = len(pts)
    return out


@pytest.fixture
async def board(tmp_path, aiohttp_client):
    async def make(**kwargs):
        return await aiohttp_client(make_app(tmp_path, poll=0.1, **kwargs))
    return make


async def test_overview_finds_runs_added_after_start(tmp_path, board):
    client = await board()
    r = await client.get("/api/overview")
    assert r.status == 200 and (await r.json())["runs"] == []
    log = start_run(tmp_path / "a" / "b", iterations=50)
    log.close()
    data = await (await client.get("/api/overview")).json()
    [row] = data["runs"]
    assert row["path"] == "a/b/train.log" and row["iteration"] == 40 and row["state"] == "running"
    assert row["loss"] == pytest.approx(2.3 / 1.4, rel=1e-5) and row["lr"] == pytest.approx(0.01)
    assert row["best_accuracy"] == pytest.approx(0.1)


def frozen_clock(client) -> list[float]:
    """Make the board's clock the test's: parses take no time, so a grown log is read again at once."""
    from trainer.board.server import BOARD_KEY
    now = [0.0]
    client.server.app[BOARD_KEY].clock = lambda: now[0]
    return now


async def test_run_card_grows_with_its_log(tmp_path, board):
    log = start_run(tmp_path / "r", iterations=100)
    client = await board()
    frozen_clock(client)
    card = await (await client.get("/api/run", params={"path": "r/train.log"})).json()
    assert card["error"] is None
    assert polyline_counts(card["charts"]["loss"])["train loss"] == loss_points(100)
    assert polyline_counts(card["charts"]["accuracy"]) == {"accuracy": 2}
    assert card["points"]["train loss"] == loss_points(100)
    write_iterations(log, 100, 260)
    card = await (await client.get("/api/run", params={"path": "r/train.log"})).json()
    assert polyline_counts(card["charts"]["loss"])["train loss"] == loss_points(260)
    assert polyline_counts(card["charts"]["loss"])["test loss"] == 6
    assert card["row"]["iteration"] == 250
    log.info("Optimization Done.")
    log.close()
    card = await (await client.get("/api/run", params={"path": "r/train.log"})).json()
    assert card["row"]["state"] == "finished"


async def test_a_slow_log_is_read_again_only_after_ten_times_its_parse(tmp_path, board, monkeypatch):
    import trainer.board.runs as runs
    log = start_run(tmp_path / "r", iterations=100)
    client = await board()
    now = frozen_clock(client)
    real = runs.read_run

    def slow_read(path, name):       # a parse that takes 2 s on the board's clock
        now[0] += 2.0
        return real(path, name)

    monkeypatch.setattr(runs, "read_run", slow_read)
    get = lambda: client.get("/api/run", params={"path": "r/train.log"})  # noqa: E731
    assert (await (await get()).json())["row"]["iteration"] == 90       # parsed at 0..2: held until 22
    write_iterations(log, 100, 200)
    now[0] = 15.0
    assert (await (await get()).json())["row"]["iteration"] == 90       # grown, but still held
    now[0] = 23.0
    assert (await (await get()).json())["row"]["iteration"] == 190
    log.close()


async def test_events_announce_a_grown_log(tmp_path, board):
    log = start_run(tmp_path / "r", iterations=20)
    client = await board()
    resp = await client.get("/api/events")
    assert resp.headers["Content-Type"].startswith("text/event-stream")

    async def next_change() -> int:
        while True:
            line = (await asyncio.wait_for(resp.content.readline(), 10)).decode()
            if line.startswith("data: "):
                return int(line[6:])

    first = await next_change()
    await asyncio.sleep(0.3)   # the watcher has seen the log as it is
    write_iterations(log, 20, 40)
    log.close()
    assert await next_change() > first
    resp.close()


def _old(path: Path, seconds: float = 3600) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


async def test_states_of_runs(tmp_path, board):
    for name, last in [("done", "Optimization Done."), ("early", "Optimization stopped early (SIGINT) at iteration 40"),
                       ("running", None), ("killed", None)]:
        log = start_run(tmp_path / name, iterations=50)
        if last:
            log.info(last)
        log.close()
    failed = start_run(tmp_path / "failed", iterations=50)
    failed.line("loss is NaN at iteration 40, first produced by layer conv1", severity="E")
    failed.close()
    # a Caffe log that crashed, then was restarted in the same file and is still going
    restarted = start_run(tmp_path / "restarted", iterations=50)
    restarted.line("Check failed: error == cudaSuccess (2 vs. 0)  out of memory", severity="F")
    restarted.info("Solving LeNet")
    write_iterations(restarted, 0, 30)
    restarted.close()
    _old(tmp_path / "killed" / "train.log")
    _old(tmp_path / "done" / "train.log")
    client = await board(stale_after=600)
    rows = {r["path"].split("/")[0]: r for r in (await (await client.get("/api/overview")).json())["runs"]}
    assert {k: r["state"] for k, r in rows.items()} == {
        "done": "finished", "early": "stopped", "running": "running", "killed": "stopped",
        "failed": "failed", "restarted": "running"}
    assert "layer conv1" in rows["failed"]["note"] and "killed" in rows["killed"]["note"]
    assert rows["restarted"]["segments"] == 2 and rows["restarted"]["iteration"] == 20


async def test_corrupt_logs_are_errors_on_their_cards(tmp_path, board):
    (tmp_path / "junk.log").write_bytes(os.urandom(3000).replace(b"\n", b"x"))
    good = gzip.compress(b"I1201 10:00:00.000000 1 s.py:1] Iteration 0, loss = 1\n" * 200)
    (tmp_path / "cut.log.gz").write_bytes(good[: len(good) // 2])
    start_run(tmp_path / "fine").close()
    client = await board()
    rows = {r["path"]: r for r in (await (await client.get("/api/overview")).json())["runs"]}
    assert rows["junk.log"]["state"] == "error" and "not a Caffe log" in rows["junk.log"]["note"]
    assert rows["cut.log.gz"]["state"] == "error" and "cut.log.gz: cannot read log" in rows["cut.log.gz"]["note"]
    assert str(tmp_path) not in rows["cut.log.gz"]["note"]
    assert rows["fine/train.log"]["state"] == "running"
    card = await (await client.get("/api/run", params={"path": "junk.log"})).json()
    assert card["error"].startswith("junk.log: not a Caffe log") and card["charts"] == {}
    assert (await client.get("/api/overview")).status == 200   # still serving


def test_net_files_named_by_caffe_and_by_us():
    from trainer.board.runs import _scan_endings
    lines = ["I0101 00:00:00.000000 1 solver.cpp:81] Creating training net from net file: nets/lenet.prototxt",
             "I0101 00:00:00.000000 1 solver.cpp:81] Creating test net (#0) specified by net file: nets/val.prototxt",
             "I0101 00:00:00.000000 1 fit.py:1] Creating training net from lenet.prototxt"]
    assert _scan_endings(lines)[2] == ["nets/lenet.prototxt", "nets/val.prototxt", "lenet.prototxt"]


async def test_a_run_that_has_not_reached_iteration_0_is_running(tmp_path, board):
    from trainer.caffelog import CaffeLog
    log = CaffeLog(tmp_path / "new.log", stream=None)
    log.info("Using CPU (NumPy); random_seed 1")
    log.close()
    client = await board()
    [row] = (await (await client.get("/api/overview")).json())["runs"]
    assert row["state"] == "running" and row["iteration"] is None


async def test_real_caffe_log_of_the_transfer_study(tmp_path, board, shared_data):
    folder = shared_data / "caffe_logs" / "half0A"
    src = sorted(folder.glob("*.gz"))[0]
    for f in [src, *folder.glob("*.prototxt")]:
        shutil.copy(f, tmp_path / f.name)    # the copy's time is now: state must not rest on it
    client = await board()
    [row] = (await (await client.get("/api/overview")).json())["runs"]
    assert row["path"] == src.name and row["error"] is None and row["iteration"] == 286180
    assert row["state"] == "stopped"    # ends without 'Optimization Done.' in a closed (.gz) log
    assert "compressed log" in row["note"]
    card = await (await client.get("/api/run", params={"path": src.name})).json()
    assert polyline_counts(card["charts"]["loss"])["train loss"] == card["points"]["train loss"] > 1000
    assert card["nets"] == ["imagenet_train.prototxt", "imagenet_val.prototxt"]   # the solver is left out
    if shutil.which("dot"):
        r = await client.get("/api/draw", params={"path": "imagenet_train.prototxt"})
        assert r.status == 200 and ">conv1 (Convolution)<" in await r.text()


async def test_static_page_and_files(board):
    client = await board()
    r = await client.get("/")
    assert r.status == 200 and "run-table" in await r.text()
    assert "script-src" not in r.headers["Content-Security-Policy"] and "default-src 'self'" in r.headers["Content-Security-Policy"]
    for name, kind in [("board.js", "text/javascript"), ("board.css", "text/css")]:
        r = await client.get(f"/static/{name}")
        assert r.status == 200 and r.headers["Content-Type"].startswith(kind)
    assert (await client.get("/static/server.py")).status == 404


async def test_draw_endpoint(tmp_path, board):
    shutil.copy(ROOT / "models/lenet/lenet_train_test.prototxt", tmp_path / "lenet.prototxt")
    (tmp_path / "bad.prototxt").write_text("layer { name: ")
    client = await board()
    if shutil.which("dot") is None:
        r = await client.get("/api/draw", params={"path": "lenet.prototxt"})
        assert r.status == 422 and "dot" in await r.text()
        pytest.skip("Graphviz's dot is not installed: only the error was checked")
    r = await client.get("/api/draw", params={"path": "lenet.prototxt"})
    assert r.status == 200 and r.headers["Content-Type"] == "image/svg+xml"
    svg = await r.text()
    for name in ("conv1", "pool2", "ip2", "loss", "accuracy"):
        assert f">{name} (" in svg
    r = await client.get("/api/draw", params={"path": "bad.prototxt"})
    assert r.status == 422 and "bad.prototxt" in await r.text()
    assert (await client.get("/api/draw", params={"path": "nothere.prototxt"})).status == 404


# ------------------------------------------------------------------------------------- paths

TRAVERSALS = [
    "/api/run?path=../secret.log",
    "/api/run?path=%2e%2e/secret.log",
    "/api/run?path=%2E%2E%2Fsecret.log",
    "/api/run?path=inner/%2e%2e/%2e%2e/secret.log",
    "/api/run?path=/etc/passwd",
    "/api/run?path=%2Fetc%2Fpasswd",
    "/api/run?path=..%5Csecret.log",
    "/api/run?path=C:/secret.log",
    "/api/run?path=out/secret.log",           # a symlink to a folder outside DIR
    "/api/run?path=link.log",                 # a symlinked file outside DIR
    "/api/draw?path=../lenet.prototxt",
    "/api/db?path=%2e%2e",
    "/api/db/sheet?path=/",
    "/api/model?path=..%2f..",
    "/api/grid?path=..",
    "/api/classify?path=..",
]


@pytest.fixture
def outside(tmp_path):
    """DIR = tmp/board, with a secret log beside it and symlinks pointing out."""
    root = tmp_path / "board"
    (root / "inner").mkdir(parents=True)
    secret = start_run(tmp_path, name="secret.log")
    secret.close()
    (root / "out").symlink_to(tmp_path, target_is_directory=True)
    (root / "link.log").symlink_to(tmp_path / "secret.log")
    start_run(root / "inner", name="inside.log").close()
    (root / "alias.log").symlink_to(root / "inner" / "inside.log")
    return root


@pytest.mark.parametrize("url", TRAVERSALS)
async def test_paths_out_of_dir_are_refused(outside, aiohttp_client, url):
    from yarl import URL
    client = await aiohttp_client(make_app(outside))
    method = client.post if "classify" in url else client.get
    r = await method(URL(url, encoded=True))
    assert r.status == 403, (url, r.status, await r.text())


async def test_double_encoded_dots_are_only_a_strange_name(outside, aiohttp_client):
    from yarl import URL
    client = await aiohttp_client(make_app(outside))
    r = await client.get(URL("/api/run?path=%252e%252e/secret.log", encoded=True))
    assert r.status == 404


async def test_symlinks_inside_dir_are_served_and_outside_ones_not_listed(outside, aiohttp_client):
    client = await aiohttp_client(make_app(outside))
    names = [r["path"] for r in (await (await client.get("/api/overview")).json())["runs"]]
    assert names == ["alias.log", "inner/inside.log"]
    assert (await client.get("/api/run", params={"path": "alias.log"})).status == 200


# ------------------------------------------------------------------------------------- token

async def test_token_is_required_everywhere_when_set(tmp_path, aiohttp_client):
    start_run(tmp_path / "r").close()
    client = await aiohttp_client(make_app(tmp_path, token="s3cret-token"))
    for url in ("/", "/static/board.js", "/api/overview", "/api/run?path=r/train.log", "/api/events"):
        r = await client.get(url)
        assert r.status == 403, url
        assert (await client.get(url, params={"token": "wrong"})).status == 403
    assert (await client.post("/api/classify?path=m", data=b"x")).status == 403
    r = await client.get("/favicon.ico")     # answered, empty, so a refusal page logs no second error
    assert r.status == 204 and await r.read() == b""
    r = await client.get("/api/overview", params={"token": "s3cret-token"})
    assert r.status == 200 and "board_token" in r.cookies
    assert (await client.get("/api/run", params={"path": "r/train.log"})).status == 200   # the cookie now
    client.session.cookie_jar.clear()
    assert (await client.get("/api/overview")).status == 403
    assert (await client.get("/api/overview", headers={"X-Board-Token": "s3cret-token"})).status == 200


def test_a_token_off_loopback_only():
    from trainer.board.safety import is_loopback
    from trainer.board.serve import choose_token
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host) and choose_token(host, None) is None
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org"):
        assert not is_loopback(host)
        token = choose_token(host, None)
        assert token and len(token) >= 20 and token != choose_token(host, None)
    assert choose_token("127.0.0.1", "mine") == "mine"


async def test_loopback_board_refuses_other_host_names(tmp_path, aiohttp_client):
    client = await aiohttp_client(make_app(tmp_path))
    assert (await client.get("/api/overview")).status == 200
    r = await client.get("/api/overview", headers={"Host": "attacker.example:8470"})
    assert r.status == 403
    assert (await client.get("/api/overview", headers={"Host": "localhost:8470"})).status == 200


def test_cli_prints_the_url_with_its_token_and_enforces_it(tmp_path):
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "cli.trainer_main", "board", str(tmp_path), "--port", "0",
                             "--token", "tok-123"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"at (http://127\.0\.0\.1:(\d+)/\?token=tok-123)", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        base = f"http://127.0.0.1:{m.group(2)}"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/api/overview", timeout=10)
        assert err.value.code == 403
        with urllib.request.urlopen(base + "/api/overview?token=tok-123", timeout=10) as r:
            assert r.status == 200
        # an open event stream (a browser tab) does not hold the shutdown up
        stream = urllib.request.urlopen(base + "/api/events?token=tok-123", timeout=10)
        assert stream.readline() == b"event: change\n"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)   # aiohttp would wait 60 s for a handler still running
        if "stream" in locals():
            stream.close()
    assert proc.returncode == 0 and "board: stopped" in out


def test_the_boards_own_output_in_its_folder_is_not_a_run(tmp_path):
    """`trainer board DIR > DIR/board.log`: the board's output is no run (nor a card), while a run
    that started training and then failed stays listed as failed."""
    import json
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from trainer.caffelog import CaffeLog
    failed = start_run(tmp_path / "lenet", iterations=30)
    failed.line("loss is NaN at iteration 20, first produced by layer conv1", severity="E")
    failed.close()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(tmp_path / "board.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.trainer_main", "board", str(tmp_path), "--port", "0",
                                 "--poll", "0.1"], stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for _ in range(200):
            m = re.search(r"at http://127\.0\.0\.1:(\d+)/", (tmp_path / "board.log").read_text())
            if m or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert m, (tmp_path / "board.log").read_text()
        base = f"http://127.0.0.1:{m.group(1)}"
        with urllib.request.urlopen(base + "/api/overview", timeout=10) as r:
            rows = {row["path"]: row for row in json.load(r)["runs"]}
        assert list(rows) == ["lenet/train.log"] and rows["lenet/train.log"]["state"] == "failed"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/api/run?path=board.log", timeout=10)
        assert err.value.code == 404
        # a run started in the same folder later shows up beside it
        log = CaffeLog(tmp_path / "later.log", stream=None)
        log.run_header("fresh start")
        log.close()
        with urllib.request.urlopen(base + "/api/overview", timeout=10) as r:
            assert sorted(row["path"] for row in json.load(r)["runs"]) == ["later.log", "lenet/train.log"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_cli_refuses_a_missing_folder(tmp_path, cli):
    r = cli("trainer", "board", str(tmp_path / "nope"))
    assert r.returncode != 0 and "nope: not a folder" in r.stderr
