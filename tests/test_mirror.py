"""The local mirror: deterministic faults, learnable synthetic styles, folder mode, the CLI process."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from datakit.errors import ConfigError
from datakit.manifest import open_manifest
from datakit.manifest import load_recipe
from datakit.mirror import (MIRROR_PLACEHOLDER_SHA1, PLACEHOLDER_PATH, MirrorConfig, fault_for, placeholder_bytes,
                            serve_mirror, synthetic_image)
from scripts.mirror_process import mirror_subprocess


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def test_fault_placement_is_deterministic_and_proportional() -> None:
    paths = [f"/{i}/{i}_abc.jpg" for i in range(20000)]
    faults = {"not_found": 0.1, "reset": 0.05}
    first = [fault_for(p, faults, seed=1) for p in paths]
    assert first == [fault_for(p, faults, seed=1) for p in paths]
    assert first != [fault_for(p, faults, seed=2) for p in paths]
    assert 0.09 < first.count("not_found") / len(paths) < 0.11
    assert 0.04 < first.count("reset") / len(paths) < 0.06
    # adding a kind later in FAULT_KINDS order does not move the earlier kinds
    more = [fault_for(p, {**faults, "drip": 0.1}, seed=1) for p in paths]
    assert [a for a, b in zip(first, more) if a] == [b for a, b in zip(first, more) if a]
    with pytest.raises(ConfigError, match="unknown fault"):
        fault_for("/x", {"meteor": 0.1})


def test_synthetic_images_are_deterministic_and_decodable() -> None:
    a = synthetic_image("/1/2_x.jpg", 3, 0)
    synthetic_image.cache_clear()
    assert synthetic_image("/1/2_x.jpg", 3, 0) == a
    assert synthetic_image("/1/2_x.jpg", 3, 1) != a
    img = cv2.imdecode(np.frombuffer(a, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and 96 <= img.shape[0] <= 128 and 112 <= img.shape[1] <= 160


def _features(data: bytes) -> np.ndarray:
    img = cv2.resize(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), (64, 64))
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.float32)
    grad = np.abs(np.diff(img.astype(np.float32).mean(-1), axis=1)).mean()
    return np.array([*img.reshape(-1, 3).mean(0), hsv[..., 1].mean(), img.std(), grad])


def test_the_label_decides_the_look() -> None:
    """A nearest-centroid rule on six colour/texture statistics separates the demo's styles."""
    _, rows, _ = open_manifest("demo")
    train, test = rows[::12], rows[5::20]
    feats = {id(r): _features(synthetic_image(urlsplit(r.url).path, r.label, 0)) for r in train + test}
    x = np.array([feats[id(r)] for r in train])
    scale = x.std(0) + 1e-6
    centroids = np.array([x[[r.label == k for r in train]].mean(0) for k in range(5)]) / scale
    pred = [int(np.argmin(((feats[id(r)] / scale - centroids) ** 2).sum(1))) for r in test]
    accuracy = np.mean([p == r.label for p, r in zip(pred, test)])
    assert accuracy > 0.9


def test_placeholder_is_a_fixed_decodable_image() -> None:
    data = placeholder_bytes()
    assert hashlib.sha1(data).hexdigest() == MIRROR_PLACEHOLDER_SHA1 == "32178e5661f857db6ff504aafabf094228d951f5"
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (75, 100, 3)


def test_the_demo_recipe_names_the_mirror_placeholder() -> None:
    """The downloader learns the mirror's placeholder from the recipe, never by importing the mirror."""
    assert load_recipe("demo").placeholder_sha1 == [MIRROR_PLACEHOLDER_SHA1]
    import subprocess
    import sys
    code = "import sys, datakit.download.partition; print(sorted(m for m in sys.modules if 'mirror' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_served_paths_folder_mode_and_placeholder(tmp_path: Path) -> None:
    (tmp_path / "5_a.jpg").write_bytes(synthetic_image("/z", 1, 0))
    with serve_mirror(MirrorConfig(labels={"/1/5_a.jpg": 1, "/1/6_b.jpg": 2}, directory=str(tmp_path),
                                   faults={"placeholder": 0.0})) as m:
        assert _get(m.url + "/1/5_a.jpg")[:2] == (200, (tmp_path / "5_a.jpg").read_bytes())
        assert _get(m.url + "/1/6_b.jpg")[0] == 404  # in the manifest, not in the folder
        assert _get(m.url + "/9/unknown.jpg")[0] == 404  # not in the manifest
        assert _get(m.url + PLACEHOLDER_PATH)[1] == placeholder_bytes()
        assert m.stats.hits["/1/5_a.jpg"] == 1
        head = urllib.request.urlopen(urllib.request.Request(m.url + "/1/5_a.jpg", method="HEAD"), timeout=10)
        assert head.status == 200 and head.read() == b""   # was 405: curl -I and link checkers use HEAD
        assert int(head.headers["Content-Length"]) == (tmp_path / "5_a.jpg").stat().st_size
    with serve_mirror(MirrorConfig(any_path=True, faults={"placeholder": 1.0})) as m:
        status, body, _ = _get(m.url + "/anything/at/all.jpg")  # redirected to the placeholder
        assert status == 200 and body == placeholder_bytes()


def test_mirror_command_runs_in_a_subprocess() -> None:
    _, rows, _ = open_manifest("demo")
    with mirror_subprocess(["--manifest", "demo", "--latency", "1"]) as url:
        assert url.startswith("http://127.0.0.1:")
        path = urlsplit(rows[10].url).path
        status, body, ctype = _get(url + path)
        assert status == 200 and ctype == "image/jpeg"
        assert body == synthetic_image(path, rows[10].label, 0)


def test_mirror_reads_a_manifest_with_other_column_names_as_assemble_does(tmp_path: Path) -> None:
    """`datakit mirror --manifest my.csv --url-column url` (its error suggested --url-column, which it lacked)."""
    manifest = tmp_path / "my.csv"
    manifest.write_text("url,cls,part\nhttp://x/a/p0.jpg,0,train\nhttp://x/a/p1.jpg,3,test\n")
    with mirror_subprocess(["--manifest", str(manifest), "--url-column", "url", "--label-column", "cls",
                            "--split-column", "part"]) as url:
        status, body, _ = _get(url + "/a/p1.jpg")
        assert status == 200 and body == synthetic_image("/a/p1.jpg", 3, 0)
        assert _get(url + "/a/other.jpg")[0] == 404  # only the manifest's paths


def test_every_fault_kind_has_one_registered_handler_and_configs_are_checked(tmp_path: Path) -> None:
    from datakit.mirror import FAULT_KINDS, FAULTS, fault
    assert set(FAULTS) == set(FAULT_KINDS)
    with pytest.raises(ValueError, match="already registered"):
        fault("not_found")(FAULTS["gone"])
    with pytest.raises(ValueError, match="not in FAULT_KINDS"):
        fault("meteor")
    with pytest.raises(ConfigError, match=r"rates must be in 0..1: gone=1.5"):
        MirrorConfig(faults={"gone": 1.5}).validate()
    with pytest.raises(ConfigError, match=r"--directory .*nope: no such folder"):
        MirrorConfig.for_manifest(None, directory=str(tmp_path / "nope"))
    assert MirrorConfig.for_manifest(None, directory=str(tmp_path)).any_path
