"""`datakit convert`: Caffe's bytes and keys, skipped files, resume after SIGKILL, all three backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from datakit.convert import ConvertOptions, caffe_key, convert
from datakit.db import PROGRESS_NAME, incomplete_path, open_reader
from datakit.errors import ConfigError, DatabaseError, ImageError, ListError
from datakit.formats import caffe_pb2

ROOT = Path(__file__).resolve().parents[1]


def make_images(root: Path, n: int, *, size=(24, 32), exts=("png", "jpg"), seed: int = 0,
                gray_every: int = 0) -> list[tuple[str, int]]:
    """n small images with smooth content (so JPEG is meaningful) under root/img; returns (path, label)."""
    rng = np.random.default_rng(seed)
    (root / "img" / "sub").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        h, w = size[0] + i % 3, size[1]
        base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
        if gray_every and i % gray_every == 0:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        rel = f"sub/im {i}.{exts[i % len(exts)]}"  # a space in the path, as Caffe lists allow
        assert cv2.imwrite(str(root / "img" / rel), img)
        entries.append((rel, i % 3))
    return entries


def write_list(path: Path, entries) -> Path:
    path.write_text("".join(f"{p} {label}\n" for p, label in entries))
    return path


def opts(**kw) -> ConvertOptions:
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return ConvertOptions(**kw)


def read_all(db: Path) -> list[tuple[bytes, bytes]]:
    with open_reader(db) as reader:
        return list(reader.raw_items())


def test_raw_round_trip_exact_pixels_keys_and_protobuf(tmp_path):
    entries = make_images(tmp_path, 9)
    lst = write_list(tmp_path / "list.txt", entries)
    summary = convert(tmp_path / "img", lst, tmp_path / "db", opts(resize_height=20, resize_width=22))
    assert summary.written == 9 and not summary.skipped
    items = read_all(tmp_path / "db")
    assert [k for k, _ in items] == [f"{i:08d}_{p}".encode() for i, (p, _) in enumerate(entries)]
    for (path, label), (_key, value) in zip(entries, items):
        datum = caffe_pb2.Datum.FromString(value)  # protobuf's own parser
        expected = cv2.resize(cv2.imread(str(tmp_path / "img" / path), cv2.IMREAD_COLOR), (22, 20),
                              interpolation=cv2.INTER_LINEAR)
        assert (datum.channels, datum.height, datum.width, datum.label, datum.encoded) == (3, 20, 22, label, False)
        assert datum.data == expected.transpose(2, 0, 1).tobytes()
    with open_reader(tmp_path / "db") as reader:
        rec = next(iter(reader))
    assert rec.image.shape == (3, 20, 22) and rec.label == entries[0][1]


def test_parallel_output_equals_single_process(tmp_path):
    lst = write_list(tmp_path / "list.txt", make_images(tmp_path, 40))
    convert(tmp_path / "img", lst, tmp_path / "one", opts(workers=1, commit_every=7))
    convert(tmp_path / "img", lst, tmp_path / "two", opts(workers=2, commit_every=7))
    assert read_all(tmp_path / "one") == read_all(tmp_path / "two")


def test_encoded_keeps_file_bytes_or_reencodes(tmp_path):
    entries = make_images(tmp_path, 6)
    lst = write_list(tmp_path / "list.txt", entries)
    convert(tmp_path / "img", lst, tmp_path / "enc", opts(encoded=True))
    for (path, label), (_, value) in zip(entries, read_all(tmp_path / "enc")):
        datum = caffe_pb2.Datum.FromString(value)
        assert datum.encoded and datum.label == label and not datum.HasField("channels")
        assert datum.data == (tmp_path / "img" / path).read_bytes()  # stored unchanged, as Caffe does
    # after a resize Caffe re-encodes with cv::imencode; the reader decodes like OpenCV
    convert(tmp_path / "img", lst, tmp_path / "enc2", opts(encoded=True, encode_type="png",
                                                          resize_height=16, resize_width=16))
    with open_reader(tmp_path / "enc2", decode=True) as reader:
        records = list(reader)
    for (path, _), rec in zip(entries, records):
        ref = cv2.resize(cv2.imread(str(tmp_path / "img" / path)), (16, 16), interpolation=cv2.INTER_LINEAR)
        assert rec.encoded[:8] == b"\x89PNG\r\n\x1a\n"
        assert np.array_equal(rec.image, ref.transpose(2, 0, 1))
        assert np.array_equal(rec.image.transpose(1, 2, 0), cv2.imdecode(np.frombuffer(rec.encoded, np.uint8), 1))


def test_encode_type_differs_from_extension_reencodes(tmp_path):
    entries = make_images(tmp_path, 4, exts=("png",))
    lst = write_list(tmp_path / "list.txt", entries)
    convert(tmp_path / "img", lst, tmp_path / "db", opts(encoded=True, encode_type="jpg"))
    for (_, value) in read_all(tmp_path / "db"):
        assert caffe_pb2.Datum.FromString(value).data[:3] == b"\xff\xd8\xff"


def test_gray_single_channel_end_to_end(tmp_path, cli):
    entries = make_images(tmp_path, 5, gray_every=2)
    lst = write_list(tmp_path / "list.txt", entries)
    r = cli("datakit", "convert", str(tmp_path / "img"), str(lst), str(tmp_path / "db"), "--gray", "--workers", "2",
            "--resize-height", "20", "--resize-width", "30")
    assert r.returncode == 0, r.stderr
    with open_reader(tmp_path / "db") as reader:
        records = list(reader)
    expected = [cv2.resize(cv2.imread(str(tmp_path / "img" / p), cv2.IMREAD_GRAYSCALE), (30, 20),
                           interpolation=cv2.INTER_LINEAR) for p, _ in entries]
    for exp, rec in zip(expected, records):
        assert rec.image.shape == (1, 20, 30) and np.array_equal(rec.image[0], exp)
    r = cli("datakit", "mean", str(tmp_path / "db"), str(tmp_path / "m.npy"))
    assert r.returncode == 0, r.stderr
    mean = np.load(tmp_path / "m.npy")
    assert mean.shape == (1, 20, 30)
    np.testing.assert_array_equal(mean[0], np.mean(np.stack(expected).astype(np.float64), axis=0).astype(np.float32))


def test_corrupt_and_missing_are_skipped_reported_and_keep_caffe_indices(tmp_path, cli):
    entries = make_images(tmp_path, 5)
    (tmp_path / "img" / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    entries.insert(1, ("sub/broken.jpg", 1))
    entries.insert(3, ("sub/missing.png", 2))
    lst = write_list(tmp_path / "list.txt", entries)
    report = tmp_path / "report.json"
    r = cli("datakit", "convert", str(tmp_path / "img"), str(lst), str(tmp_path / "db"), "--report", str(report))
    assert r.returncode == 0, r.stderr
    assert f"{lst}:2: sub/broken.jpg" in r.stderr and f"{lst}:4: sub/missing.png" in r.stderr
    assert "2 skipped of 7 listed" in r.stdout
    data = json.loads(report.read_text())
    assert [(s["line"], s["path"]) for s in data["skipped"]] == [(2, "sub/broken.jpg"), (4, "sub/missing.png")]
    assert data["written"] == 5
    keys = [k.decode() for k, _ in read_all(tmp_path / "db")]
    assert keys == [f"{i:08d}_{p}" for i, (p, _) in enumerate(entries) if i not in (1, 3)]  # gaps, like Caffe
    r = cli("datakit", "convert", str(tmp_path / "img"), str(lst), str(tmp_path / "db2"), "--strict")
    assert r.returncode != 0 and "sub/broken.jpg" in r.stderr and "--strict" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_list_and_options_fail_before_any_work(tmp_path):
    make_images(tmp_path, 2)
    bad = tmp_path / "bad.txt"
    bad.write_text("sub/im 0.png 0\n../etc/passwd 1\n")
    with pytest.raises(ListError, match=r"bad.txt:2: .*escapes"):
        convert(tmp_path / "img", bad, tmp_path / "db", opts())
    assert not (tmp_path / "db").exists() and not incomplete_path(tmp_path / "db").exists()
    with pytest.raises(ConfigError, match="both --resize-height and --resize-width"):
        convert(tmp_path / "img", bad, tmp_path / "db", opts(resize_height=10))
    with pytest.raises(ConfigError, match="--encoded"):
        convert(tmp_path / "img", bad, tmp_path / "db", opts(backend="hdf5", encoded=True))
    # a size no image can be resized to: said at once, not as "none of its images could be read"
    with pytest.raises(ConfigError, match=r"--resize-height 100000 --resize-width 100000 is 10000000000 pixels"):
        convert(tmp_path / "img", bad, tmp_path / "db", opts(resize_height=100000, resize_width=100000))


def test_existing_database_is_kept_unless_overwrite(tmp_path):
    entries = make_images(tmp_path, 4)
    lst = write_list(tmp_path / "list.txt", entries)
    convert(tmp_path / "img", lst, tmp_path / "db", opts())
    before = read_all(tmp_path / "db")
    with pytest.raises(DatabaseError, match="already exists.*--overwrite"):
        convert(tmp_path / "img", lst, tmp_path / "db", opts(resize_height=8, resize_width=8))
    assert read_all(tmp_path / "db") == before
    write_list(lst, entries[:2])
    convert(tmp_path / "img", lst, tmp_path / "db", opts(overwrite=True))
    assert len(read_all(tmp_path / "db")) == 2
    (tmp_path / "notadb").mkdir()
    (tmp_path / "notadb" / "precious.txt").write_text("x")
    with pytest.raises(DatabaseError, match="not a database"):
        convert(tmp_path / "img", lst, tmp_path / "notadb", opts(overwrite=True))
    assert (tmp_path / "notadb" / "precious.txt").exists()


def test_check_size_is_fatal_and_resumable(tmp_path):
    entries = make_images(tmp_path, 4)  # heights 24, 25, 26, 24
    lst = write_list(tmp_path / "list.txt", entries)
    with pytest.raises(ImageError, match=r"list.txt:2: .*differs from the first record's 3x24x32"):
        convert(tmp_path / "img", lst, tmp_path / "db", opts(check_size=True))
    assert incomplete_path(tmp_path / "db").is_dir() and not (tmp_path / "db").exists()


def test_a_fatal_image_error_says_what_was_kept_and_how_to_go_on(tmp_path):
    """A newcomer's rerun after --check-size stopped was told 'an interrupted conversion is there': the
    error itself now says the records are kept, and the --resume it suggests finishes once the image is fixed."""
    entries = make_images(tmp_path, 40, size=(24, 32))
    lst = write_list(tmp_path / "list.txt", entries)
    odd = tmp_path / "img" / entries[30][0]
    good = cv2.imread(str(tmp_path / "img" / entries[0][0]))
    for i, (path, _) in enumerate(entries):  # one size for all but record 30
        cv2.imwrite(str(tmp_path / "img" / path), cv2.resize(good, (32, 20 if i == 30 else 24)))
    with pytest.raises(ImageError) as err:
        convert(tmp_path / "img", lst, tmp_path / "db", opts(check_size=True, commit_every=4, checkpoint_every=1))
    message = str(err.value)
    assert "list.txt:31: " in message and f"records saved before it are kept in {incomplete_path(tmp_path / 'db')}" \
        in message and "rerun with --resume" in message and "--overwrite to start over" in message
    cv2.imwrite(str(odd), good)
    summary = convert(tmp_path / "img", lst, tmp_path / "db", opts(check_size=True, resume=True))
    assert summary.written == 40 and summary.resumed_at


@pytest.mark.parametrize("workers", [1, 2])
def test_a_fatal_image_error_keeps_every_record_before_it_not_just_the_last_checkpoint(tmp_path, workers):
    """The records before the bad one were decoded and counted, but only the last checkpoint was kept (here
    none: a checkpoint every 1000 x 4 records): the error said "the 0 records saved before it"."""
    entries = make_images(tmp_path, 40, size=(24, 32))
    lst = write_list(tmp_path / "list.txt", entries)
    good = cv2.imread(str(tmp_path / "img" / entries[0][0]))
    for i, (path, _) in enumerate(entries):  # one size for all but record 30
        cv2.imwrite(str(tmp_path / "img" / path), cv2.resize(good, (32, 20 if i == 30 else 24)))
    with pytest.raises(ImageError) as err:
        convert(tmp_path / "img", lst, tmp_path / "db", opts(check_size=True, commit_every=4, checkpoint_every=1000,
                                                             workers=workers))
    assert "list.txt:31: " in str(err.value) and "the 30 records saved before it are kept in " in str(err.value)
    progress = json.loads((incomplete_path(tmp_path / "db") / PROGRESS_NAME).read_text())
    assert progress["written"] == progress["next_index"] == 30
    cv2.imwrite(str(tmp_path / "img" / entries[30][0]), good)
    summary = convert(tmp_path / "img", lst, tmp_path / "db", opts(check_size=True, resume=True))
    assert summary.written == 40 and summary.resumed_at == 30
    assert [k for k, _ in read_all(tmp_path / "db")] == [caffe_key(i, p) for i, (p, _) in enumerate(entries)]


def test_shuffle_is_seeded_and_recorded(tmp_path):
    entries = make_images(tmp_path, 12)
    lst = write_list(tmp_path / "list.txt", entries)
    a = convert(tmp_path / "img", lst, tmp_path / "a", opts(shuffle=True, seed=5))
    convert(tmp_path / "img", lst, tmp_path / "b", opts(shuffle=True, seed=5))
    c = convert(tmp_path / "img", lst, tmp_path / "c", opts(shuffle=True))
    ka = [k for k, _ in read_all(tmp_path / "a")]
    assert ka == [k for k, _ in read_all(tmp_path / "b")]
    assert sorted(k[9:] for k in ka) == sorted(p.encode() for p, _ in entries)
    assert ka != [caffe_key(i, p) for i, (p, _) in enumerate(entries)]
    assert a.seed == 5 and isinstance(c.seed, int)
    prog = json.loads((tmp_path / "c" / PROGRESS_NAME).read_text())
    assert prog["options"]["seed"] == c.seed and prog["status"] == "complete"


def test_leveldb_backend(tmp_path):
    entries = make_images(tmp_path, 5)
    lst = write_list(tmp_path / "list.txt", entries)
    convert(tmp_path / "img", lst, tmp_path / "lvl", opts(backend="leveldb", workers=2))
    convert(tmp_path / "img", lst, tmp_path / "lm", opts())
    assert read_all(tmp_path / "lvl") == read_all(tmp_path / "lm")


def test_hdf5_backend_chunks_and_list(tmp_path):
    entries = make_images(tmp_path, 7)
    lst = write_list(tmp_path / "list.txt", entries)
    convert(tmp_path / "img", lst, tmp_path / "h5", opts(backend="hdf5", hdf5_chunk=3, resize_height=8,
                                                        resize_width=10))
    files = (tmp_path / "h5" / "list.txt").read_text().split()
    assert len(files) == 3 and all(Path(f).is_absolute() and Path(f).exists() for f in files)
    data = np.concatenate([h5py.File(f, "r")["data"][:] for f in files])
    labels = np.concatenate([h5py.File(f, "r")["label"][:] for f in files])
    assert data.shape == (7, 3, 8, 10) and data.dtype == np.float32
    assert list(labels) == [float(lab) for _, lab in entries]
    ref = cv2.resize(cv2.imread(str(tmp_path / "img" / entries[6][0])), (10, 8), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(data[6], ref.transpose(2, 0, 1).astype(np.float32))


def _convert_cmd(tmp_path: Path, lst: Path, db: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cli.datakit_main", "convert", str(tmp_path / "img"), str(lst), str(db),
            "--workers", "1", "--commit-every", "5", "--resize-height", "64", "--resize-width", "64",
            "--shuffle", "--no-progress", *extra]


@pytest.mark.parametrize("backend", ["lmdb", "hdf5"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, backend):
    entries = make_images(tmp_path, 160, size=(120, 160))
    entries.insert(17, ("sub/missing.png", 1))
    lst = write_list(tmp_path / "list.txt", entries)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    extra = ("--backend", backend, "--hdf5-chunk", "5") if backend == "hdf5" else ("--backend", backend)
    db = tmp_path / "db"
    progress_file = incomplete_path(db) / PROGRESS_NAME
    proc = subprocess.Popen(_convert_cmd(tmp_path, lst, db, "--seed", "3", *extra), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            written = json.loads(progress_file.read_text())["written"]
        except (FileNotFoundError, ValueError, KeyError):
            written = 0
        if written >= 20:
            proc.send_signal(signal.SIGKILL)
            killed_at = written
            break
        time.sleep(0.002)
    proc.wait()
    assert killed_at is not None, "conversion finished before it could be killed"
    assert not db.exists() and incomplete_path(db).is_dir()
    with pytest.raises(DatabaseError, match="interrupted.*--resume"):
        open_reader(db)
    r = subprocess.run(_convert_cmd(tmp_path, lst, db, *extra, "--resume"), env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "resumed at record" in r.stdout
    ref = tmp_path / "ref"
    r = subprocess.run(_convert_cmd(tmp_path, lst, ref, "--seed", "3", *extra), env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with open_reader(db) as a, open_reader(ref) as b:
        if backend == "hdf5":
            ra, rb = list(a), list(b)
            assert len(ra) == len(rb) == 160
            assert all(x.label == y.label and np.array_equal(x.image, y.image) for x, y in zip(ra, rb))
        else:
            assert list(a.raw_items()) == list(b.raw_items())
            assert len(a) == 160
    done = json.loads((db / PROGRESS_NAME).read_text())
    assert done["status"] == "complete" and [s["path"] for s in done["skipped"]] == ["sub/missing.png"]


def test_resume_refuses_changed_options_or_list(tmp_path):
    entries = make_images(tmp_path, 6)
    lst = write_list(tmp_path / "list.txt", entries)
    work = incomplete_path(tmp_path / "db")
    work.mkdir()
    (work / PROGRESS_NAME).write_text(json.dumps({
        "status": "incomplete", "options": {**{k: getattr(ConvertOptions(), k) for k in (
            "backend", "resize_height", "resize_width", "gray", "shuffle", "seed", "encoded", "encode_type",
            "check_size", "hdf5_chunk", "allow_absolute")}, "resize_height": 5, "resize_width": 5},
        "list_sha256": "0" * 64, "root": str((tmp_path / "img").resolve()), "next_index": 0, "written": 0,
        "shards": 0, "shapes": [], "skipped": []}))
    with pytest.raises(ConfigError, match="list file changed"):
        convert(tmp_path / "img", lst, tmp_path / "db", opts(resume=True))
    with pytest.raises(DatabaseError, match="--resume to finish it"):
        convert(tmp_path / "img", lst, tmp_path / "db", opts())
    # resuming a finished database is a no-op, not an error
    convert(tmp_path / "img", lst, tmp_path / "done", opts())
    again = convert(tmp_path / "img", lst, tmp_path / "done", opts(resume=True))
    assert again.already_complete and again.written == 6


def test_workers_start_after_the_caller_used_opencv_threads(tmp_path):
    """Forked workers must not deadlock when this process already ran OpenCV's thread pool."""
    lst = write_list(tmp_path / "list.txt", make_images(tmp_path, 12))
    script = f"""
import cv2, numpy as np
from datakit.convert import ConvertOptions, convert
from datakit.mean import compute_mean
big = np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), dtype=np.uint8)
for _ in range(5):
    cv2.resize(big, (700, 700)); cv2.GaussianBlur(big, (9, 9), 0)
s = convert({str(tmp_path / 'img')!r}, {str(lst)!r}, {str(tmp_path / 'db')!r},
            ConvertOptions(workers=2, resize_height=20, resize_width=20, encoded=True, progress=False))
print(s.written, compute_mean({str(tmp_path / 'db')!r}, workers=2, progress=False).count, cv2.getNumThreads() > 0)
"""
    r = subprocess.run([sys.executable, "-"], input=script, text=True, capture_output=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))  # from stdin: nothing to re-import
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["12", "12", "True"]
