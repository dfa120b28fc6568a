"""`datakit fetch-model` / `fetch-mean` against a local aiohttp server on 127.0.0.1: resume after a
cut connection (HTTP Range), bad checksums, servers that ignore ranges, offline errors."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import socket
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from datakit.errors import DownloadError, FormatError
from datakit.fetch import FetchOptions, fetch_file
from datakit.formats.blobproto import array_to_blob
from datakit.model_zoo import MEANS, MODELS
from tests.conftest import ROOT, SHARED_DATA

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
SHA1 = hashlib.sha1(PAYLOAD).hexdigest()


class Files:
    """What the server serves, how (cut after N bytes, ranges ignored), and the Range headers it saw."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_first: dict[str, int] = {}
        self.ignore_ranges = False
        self.ranges: list[str | None] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self.files:
            raise web.HTTPNotFound()
        data = self.files[name]
        rng = request.headers.get("Range")
        self.ranges.append(rng)
        start = 0
        if rng and not self.ignore_ranges:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        resp = web.StreamResponse(status=206 if start else 200)
        resp.content_length = len(data) - start
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await resp.prepare(request)
        cut = self.cut_first.pop(name, None)
        body = data[start:start + cut] if cut is not None else data[start:]
        await resp.write(body)
        if cut is not None:
            request.transport.close()   # the connection drops mid-body
            return resp
        await resp.write_eof()
        return resp


@pytest.fixture
async def server(aiohttp_server):
    files = Files()
    app = web.Application()
    app.router.add_get("/{name}", files.handle)
    srv = await aiohttp_server(app, host="127.0.0.1")
    files.url = f"http://127.0.0.1:{srv.port}"
    return files


def quick(**kw) -> FetchOptions:
    return FetchOptions(backoff=0.01, progress=False, stream=io.StringIO(), **kw)


async def test_a_cut_connection_resumes_with_a_range_request(server, tmp_path):
    server.files["m.caffemodel"] = PAYLOAD
    server.cut_first["m.caffemodel"] = 100_000
    dest, what = await fetch_file(f"{server.url}/m.caffemodel", tmp_path / "m.caffemodel", sha1=SHA1, options=quick())
    assert what == "downloaded" and dest.read_bytes() == PAYLOAD
    assert server.ranges == [None, "bytes=100000-"]
    assert not (tmp_path / "m.caffemodel.part").exists()
    # Present and verified: nothing is asked of the server.
    assert (await fetch_file(f"{server.url}/m.caffemodel", dest, sha1=SHA1, options=quick()))[1] == "present"
    assert len(server.ranges) == 2


async def test_an_interrupted_run_keeps_its_part_and_the_next_run_resumes(server, tmp_path):
    server.files["m.caffemodel"] = PAYLOAD
    server.cut_first["m.caffemodel"] = 120_000
    with pytest.raises(DownloadError, match=r"download failed after 1 attempt\(s\): .*120,000 bytes kept in "
                                            r".*m\.caffemodel\.part, the next run resumes"):
        await fetch_file(f"{server.url}/m.caffemodel", tmp_path / "m.caffemodel", sha1=SHA1, options=quick(retries=0))
    assert (tmp_path / "m.caffemodel.part").stat().st_size == 120_000 and not (tmp_path / "m.caffemodel").exists()
    await fetch_file(f"{server.url}/m.caffemodel", tmp_path / "m.caffemodel", sha1=SHA1, options=quick(retries=0))
    assert (tmp_path / "m.caffemodel").read_bytes() == PAYLOAD and server.ranges[-1] == "bytes=120000-"


async def test_a_server_that_ignores_ranges_is_followed_by_starting_over(server, tmp_path):
    server.files["m.caffemodel"] = PAYLOAD
    server.ignore_ranges = True
    (tmp_path / "m.caffemodel.part").write_bytes(b"stale bytes from elsewhere")
    await fetch_file(f"{server.url}/m.caffemodel", tmp_path / "m.caffemodel", sha1=SHA1, options=quick())
    assert (tmp_path / "m.caffemodel").read_bytes() == PAYLOAD


async def test_a_bad_checksum_is_an_error_and_leaves_nothing(server, tmp_path):
    server.files["m.caffemodel"] = PAYLOAD[:-1] + b"X"
    with pytest.raises(DownloadError, match=r"sha1 [0-9a-f]{40} is not the published " + SHA1):
        await fetch_file(f"{server.url}/m.caffemodel", tmp_path / "m.caffemodel", sha1=SHA1, options=quick())
    assert list(tmp_path.iterdir()) == []


async def test_offline_is_one_clear_line_with_what_to_do(tmp_path):
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = quick(retries=2)
    with pytest.raises(DownloadError) as err:
        await fetch_file(f"http://127.0.0.1:{port}/bvlc_reference_caffenet.caffemodel",
                         tmp_path / "bvlc_reference_caffenet.caffemodel", sha1=SHA1, options=options)
    # the wait of the retries is announced once, at the first failure (offline it was 16 s of silence)
    said = options.stream.getvalue()
    assert said.count("\n") == 1 and said.startswith(f"127.0.0.1:{port}: cannot connect to 127.0.0.1:{port} (")
    assert said.endswith("; trying 2 more time(s) over 0 s (Ctrl-C stops)\n")
    message = str(err.value)
    assert "\n" not in message and f"cannot connect to 127.0.0.1:{port}" in message
    assert f"offline? download http://127.0.0.1:{port}/bvlc_reference_caffenet.caffemodel on a machine with " \
           f"network, copy it to {tmp_path}/bvlc_reference_caffenet.caffemodel (sha1 {SHA1})" in message


async def _cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "cli.datakit_main", *args, cwd=cwd, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_cli_fetch_model_by_recipe_and_by_caffe_model_folder(server, tmp_path):
    # The real recipe against a mirror that serves other bytes: the published sha1 catches it.
    server.files["bvlc_reference_caffenet.caffemodel"] = PAYLOAD
    rc, out, err = await _cli("fetch-model", "bvlc_reference_caffenet", "--mirror", server.url, cwd=tmp_path)
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert f"sha1 {SHA1} is not the published {MODELS['bvlc_reference_caffenet'].sha1}" in err
    assert not (tmp_path / "bvlc_reference_caffenet.caffemodel").exists()
    rc, out, err = await _cli("fetch-model", "bvlc_refrence_caffenet", cwd=tmp_path)
    assert rc == 1 and "did you mean bvlc_reference_caffenet?" in err
    # A model folder as Caffe's download_model_binary.py takes it: readme.md front matter.
    folder = tmp_path / "models/my_net"
    folder.mkdir(parents=True)
    (folder / "readme.md").write_text(f"---\nname: My Net\ncaffemodel: my_net.caffemodel\ncaffemodel_url: "
                                      f"http://example.invalid/my_net.caffemodel\nsha1: {SHA1}\n---\n\nAbout it.\n")
    server.files["my_net.caffemodel"] = PAYLOAD
    server.cut_first["my_net.caffemodel"] = 50_000
    rc, out, err = await _cli("fetch-model", "models/my_net", "--mirror", server.url, cwd=tmp_path)
    assert rc == 0, err
    assert out.strip() == f"models/my_net/my_net.caffemodel: downloaded from {server.url}/my_net.caffemodel; " \
                          f"sha1 {SHA1} verified"
    assert (folder / "my_net.caffemodel").read_bytes() == PAYLOAD and server.ranges[-1] == "bytes=50000-"
    rc, out, err = await _cli("fetch-model", "models/my_net", cwd=tmp_path)   # offline is fine: it is there
    assert rc == 0 and "already there" in out


def _aux_tarball(mean: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("imagenet_mean.binaryproto", mean), ("synset_words.txt", b"n01440764 tench\n"),
                           ("imagenet.bet.pickle", b"\x80\x04never unpickled"), ("../escape.txt", b"no")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _synthetic_mean(means=(104.0070, 116.6688, 122.6789)) -> bytes:
    arr = np.stack([np.full((256, 256), v, np.float32) for v in means])[None]
    return array_to_blob(arr, legacy_4d=True).SerializeToString()


async def test_cli_fetch_mean_extracts_and_checks_the_mean(server, tmp_path):
    recipe = MEANS["ilsvrc12"]
    real = SHARED_DATA / "means/imagenet_mean.binaryproto"
    mean = real.read_bytes() if real.is_file() else _synthetic_mean()
    server.files[recipe.archive] = archive = _aux_tarball(mean)
    cut = len(archive) // 2   # the synthetic mean's archive (no ../shared) is only a few KB
    server.cut_first[recipe.archive] = cut
    rc, out, err = await _cli("fetch-mean", "ilsvrc12", "--mirror", server.url, "--all", cwd=tmp_path)
    assert rc == 0, err
    assert (tmp_path / "imagenet_mean.binaryproto").read_bytes() == mean
    assert (tmp_path / "synset_words.txt").is_file()
    assert not (tmp_path / "imagenet.bet.pickle").exists() and not (tmp_path.parent / "escape.txt").exists()
    assert not (tmp_path / recipe.archive).exists()          # removed once extracted
    assert "per-channel means (BGR) 104.0070, 116.6688, 122.6789" in out
    assert ("byte for byte the published mean" in out) == real.is_file()
    assert server.ranges[-1] == f"bytes={cut}-"
    from datakit.formats.blobproto import read_mean
    assert read_mean(tmp_path / "imagenet_mean.binaryproto").shape == (3, 256, 256)


async def test_cli_fetch_mean_refuses_a_mean_that_is_not_imagenets(server, tmp_path):
    recipe = MEANS["ilsvrc12"]
    server.files[recipe.archive] = _aux_tarball(_synthetic_mean((90.0, 116.6688, 122.6789)))
    rc, out, err = await _cli("fetch-mean", "ilsvrc12", "--mirror", server.url, cwd=tmp_path)
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "per-channel means 90.0000, 116.6688, 122.6789, but the ilsvrc12 mean's are 104.0070" in err
    assert not (tmp_path / "imagenet_mean.binaryproto").exists()


def test_check_mean_rejects_other_shapes():
    from datakit.fetch_mean import check_mean
    small = array_to_blob(np.zeros((1, 3, 8, 8), np.float32), legacy_4d=True).SerializeToString()
    with pytest.raises(FormatError, match=r"shape \(1, 3, 8, 8\), but the ilsvrc12 mean is \(1, 3, 256, 256\)"):
        check_mean(small, MEANS["ilsvrc12"], "x")


async def test_offline_a_copied_archive_is_used_and_kept(tmp_path):
    """README: copy the file into the folder and run the same command again, no network needed."""
    recipe = MEANS["ilsvrc12"]
    (tmp_path / recipe.archive).write_bytes(_aux_tarball(_synthetic_mean()))
    rc, out, err = await _cli("fetch-mean", "ilsvrc12", cwd=tmp_path)
    assert rc == 0, err
    assert (tmp_path / "imagenet_mean.binaryproto").is_file() and (tmp_path / recipe.archive).is_file()
    assert "its bytes differ from the 2014 reference copy" in out


async def test_a_copied_file_that_is_not_a_tar_archive_is_one_line(tmp_path):
    """tarfile's 'r:*' error lists every method it tried, one per line: the message stays one line."""
    recipe = MEANS["ilsvrc12"]
    (tmp_path / recipe.archive).write_bytes(b"not a tar archive at all\n" * 20)
    rc, out, err = await _cli("fetch-mean", "ilsvrc12", cwd=tmp_path)
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert f"{recipe.archive}: not a readable tar archive (" in err and "delete it and run again" in err


async def test_a_progress_bar_counts_the_resumed_bytes(server, tmp_path, monkeypatch):
    import tqdm
    closed: list[tuple[int, int]] = []

    class Spy(tqdm.tqdm):
        def close(self) -> None:
            if not self.disable:
                closed.append((self.n, self.total))
            super().close()
    monkeypatch.setattr(tqdm, "tqdm", Spy)
    server.files["m.caffemodel"] = PAYLOAD
    server.cut_first["m.caffemodel"] = 100_000
    out = io.StringIO()
    await fetch_file(f"{server.url}/m.caffemodel", tmp_path / "m.caffemodel", sha1=SHA1,
                     options=FetchOptions(backoff=0.01, progress=True, stream=out))
    assert closed == [(len(PAYLOAD), len(PAYLOAD))] and "m.caffemodel" in out.getvalue()
    closed.clear()
    await fetch_file(f"{server.url}/m.caffemodel", tmp_path / "other", sha1=SHA1,
                     options=FetchOptions(progress=None, stream=io.StringIO()))   # not a terminal: no bar
    assert closed == []
