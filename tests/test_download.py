"""The async downloader against real aiohttp servers on 127.0.0.1: every failure kind, retries, limits."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from aiohttp import web

from datakit.download import (FLICKR_PLACEHOLDER_SHA1, Downloader, DownloadOptions, Job, Kind, check_image,
                              download_partition, validate_image)
from datakit.manifest import load_recipe
from datakit.mirror import EXPECTED_REASON, FAULT_KINDS, MirrorConfig, fault_for, placeholder_bytes, serve_mirror


def _paths(n: int) -> list[str]:
    return [f"/{1000 + i % 97}/{5000000000 + i}_{i:010x}.jpg" for i in range(n)]


def _fast(**kw) -> DownloadOptions:
    base = dict(concurrency=32, per_host=32, retries=2, backoff=0.01, read_timeout=0.3, timeout=10,
                max_bytes=1 << 20, workers=2)
    base.update(kw)
    return DownloadOptions(**base)


def test_every_fault_kind_is_counted_exactly(tmp_path: Path) -> None:
    paths = _paths(390)
    faults = {kind: 0.05 for kind in FAULT_KINDS}  # 13 kinds x 5 % = 65 % of paths faulty
    expected = Counter(EXPECTED_REASON[fault_for(p, faults, seed=7)] if fault_for(p, faults, seed=7) else "ok"
                       for p in paths)
    assert len([k for k in expected if k != "ok"]) == len(set(EXPECTED_REASON.values()) - {"ok"})  # all kinds occur
    # the drip's pauses (5 s) dwarf the read timeout (1 s), so only drips time out even on a busy machine
    config = MirrorConfig(labels={p: i % 5 for i, p in enumerate(paths)}, seed=7, faults=faults,
                          drip_interval=5.0, huge_limit=4 << 20)
    with serve_mirror(config) as mirror:
        jobs = [Job(i, mirror.url + p, tmp_path / p.rsplit("/", 1)[-1]) for i, p in enumerate(paths)]
        outcomes = {}
        stats = asyncio.run(Downloader(_fast(read_timeout=1.0)).run(jobs, lambda o: outcomes.__setitem__(o.job.key, o)))
        hits = dict(mirror.stats.hits)
    assert dict(stats.kinds) == dict(expected)
    # exactly the successful files are on disk, and each one decodes
    on_disk = {p.name for p in tmp_path.iterdir()}
    assert on_disk == {jobs[k].dest.name for k, o in outcomes.items() if o.ok}
    for name in list(on_disk)[:20]:
        assert cv2.imread(str(tmp_path / name)) is not None
    # retries: permanent failures are asked once, transient ones 1 + retries times, flaky twice
    for i, p in enumerate(paths):
        kind = fault_for(p, faults, seed=7)
        if kind in ("not_found", "gone", "not_image", "corrupt", "bomb", "huge"):
            assert hits[p] == 1, (kind, hits[p])
        elif kind in ("server_error", "throttle", "truncated", "drip"):
            assert hits[p] == 3, (kind, hits[p])
        elif kind == "reset":  # aiohttp itself re-sends once when a reused keep-alive connection was reset
            assert 3 <= hits[p] <= 6, (kind, hits[p])
        elif kind == "flaky":
            assert hits[p] == 2 and outcomes[i].ok
    assert not list(tmp_path.glob(".*.part"))


def test_validate_image_rejects_placeholder_bomb_and_garbage(tmp_path: Path) -> None:
    opts = DownloadOptions(placeholder_sha1=frozenset({hashlib.sha1(b"\xff\xd8\xffplaceholder").hexdigest()}))
    ok, jpg = cv2.imencode(".jpg", np.full((20, 30, 3), 128, np.uint8))
    assert validate_image(jpg.tobytes(), tmp_path / "a.jpg", opts) == ("ok", "")
    assert (tmp_path / "a.jpg").read_bytes() == jpg.tobytes()
    assert validate_image(b"\xff\xd8\xffplaceholder", tmp_path / "b.jpg", opts)[0] == "placeholder"
    assert validate_image(b"<html>", tmp_path / "c.jpg", opts)[0] == "undecodable"
    assert validate_image(jpg.tobytes()[:40], tmp_path / "d.jpg", opts)[0] == "undecodable"
    small = DownloadOptions(max_pixels=100)
    assert validate_image(jpg.tobytes(), tmp_path / "e.jpg", small)[0] == "too_many_pixels"
    assert validate_image(jpg.tobytes(), tmp_path / "f.jpg", DownloadOptions(max_bytes=10))[0] == "too_large"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg"]
    # Caffe's own placeholder hash is refused by default; the mirror's by the recipe of the manifest it serves
    assert FLICKR_PLACEHOLDER_SHA1 in DownloadOptions().placeholder_sha1
    demo = DownloadOptions().with_placeholders(load_recipe("demo").placeholder_sha1)
    assert validate_image(placeholder_bytes(), tmp_path / "g.jpg", demo)[0] == "placeholder"
    assert check_image(placeholder_bytes(), DownloadOptions()).kind == Kind.OK  # the downloader knows no mirror


def test_resize_on_the_way_in(tmp_path: Path) -> None:
    ok, jpg = cv2.imencode(".jpg", np.random.RandomState(0).randint(0, 255, (200, 300, 3)).astype(np.uint8))
    assert validate_image(jpg.tobytes(), tmp_path / "a.jpg", DownloadOptions(resize=50))[0] == "ok"
    assert cv2.imread(str(tmp_path / "a.jpg")).shape == (50, 75, 3)
    assert validate_image(jpg.tobytes(), tmp_path / "b.jpg", DownloadOptions(resize=60, resize_mode="longer"))[0] == "ok"
    assert cv2.imread(str(tmp_path / "b.jpg")).shape == (40, 60, 3)


async def test_redirects_scheme_content_type_and_retry_after(aiohttp_server, tmp_path: Path) -> None:
    ok, jpg = cv2.imencode(".jpg", np.full((8, 8, 3), 99, np.uint8))
    seen: Counter = Counter()

    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        seen[name] += 1
        if name == "loop.jpg":
            raise web.HTTPFound("/loop.jpg")
        if name == "hop.jpg":
            raise web.HTTPFound("/img.jpg")
        if name == "ftp.jpg":
            raise web.HTTPFound("ftp://127.0.0.1/x.jpg")
        if name == "later.jpg" and seen[name] == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        if name == "big.jpg":
            return web.Response(body=b"\xff\xd8\xff" + b"\0" * 5000, content_type="image/jpeg")
        if name == "text.jpg":
            return web.Response(body=jpg.tobytes(), content_type="text/plain")
        if name == "octet.jpg":
            return web.Response(body=jpg.tobytes(), content_type="application/octet-stream")
        return web.Response(body=jpg.tobytes(), content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/{name}", handler)
    server = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}"
    names = ["loop.jpg", "hop.jpg", "ftp.jpg", "later.jpg", "big.jpg", "text.jpg", "octet.jpg"]
    jobs = [Job(i, f"{base}/{n}", tmp_path / n) for i, n in enumerate(names)]
    jobs.append(Job(99, "file:///etc/passwd", tmp_path / "passwd"))
    result = {}
    await Downloader(_fast(max_redirects=3, max_bytes=4000, retries=1, backoff=5.0)).run(
        jobs, lambda o: result.__setitem__(o.job.dest.name, o))
    kinds = {k: v.kind for k, v in result.items()}
    assert kinds == {"loop.jpg": "too_many_redirects", "hop.jpg": "ok", "ftp.jpg": "bad_url",
                     "later.jpg": "ok", "big.jpg": "too_large", "text.jpg": "not_image", "octet.jpg": "ok",
                     "passwd": "bad_url"}
    assert seen["loop.jpg"] == 3  # bounded: aiohttp stops once 3 redirects have been answered
    assert result["later.jpg"].attempts == 2
    assert result["later.jpg"].waited == 1.0  # Retry-After was honoured instead of the 5 s backoff
    assert not (tmp_path / "passwd").exists()


def test_download_partition_is_self_contained(tmp_path: Path) -> None:
    paths = _paths(30)
    with serve_mirror(MirrorConfig(labels={p: 1 for p in paths}, faults={"not_found": 0.3}, seed=3)) as m:
        jobs = [Job(i, m.url + p, tmp_path / p.rsplit("/", 1)[-1], partition=4) for i, p in enumerate(paths)]
        stats, failures = download_partition(jobs, _fast())
    n404 = sum(fault_for(p, {"not_found": 0.3}, 3) == "not_found" for p in paths)
    assert stats.kinds["http_404"] == n404 == len(failures) and stats.ok == 30 - n404
    assert all(f.job.partition == 4 for f in failures)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrency_bound_is_respected(tmp_path: Path, concurrency: int) -> None:
    paths = _paths(24)
    in_flight = {"now": 0, "max": 0}

    class Counting(Downloader):
        async def _get(self, session, url):  # wraps the real request to watch the bound
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])
            try:
                return await super()._get(session, url)
            finally:
                in_flight["now"] -= 1

    with serve_mirror(MirrorConfig(labels={p: 0 for p in paths}, latency=0.02)) as m:
        jobs = [Job(i, m.url + p, tmp_path / p.rsplit("/", 1)[-1]) for i, p in enumerate(paths)]
        stats = asyncio.run(Counting(_fast(concurrency=concurrency)).run(jobs))
    assert stats.ok == 24
    assert in_flight["max"] == concurrency
