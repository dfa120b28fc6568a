"""datakit.download.store.write_image: the downloader's atomic file write (temporary name, rename), in few system calls."""

from __future__ import annotations

import os

import pytest

import datakit.download.store as download
from datakit.download.store import write_image


def test_writes_whole_file_with_the_umask_mode_and_no_temporaries(tmp_path):
    old = os.umask(0o027)
    try:
        write_image(tmp_path / "a.jpg", b"x" * 70000)
    finally:
        os.umask(old)
    assert (tmp_path / "a.jpg").read_bytes() == b"x" * 70000
    assert (tmp_path / "a.jpg").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg"]


def test_replaces_an_existing_file_and_creates_a_missing_folder(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"old, cut sh")
    write_image(tmp_path / "a.jpg", b"new")
    write_image(tmp_path / "sub" / "b.jpg", b"b", fsync=True)
    assert (tmp_path / "a.jpg").read_bytes() == b"new"
    assert (tmp_path / "sub" / "b.jpg").read_bytes() == b"b"


def test_a_leftover_temporary_with_the_same_name_is_left_alone(tmp_path, monkeypatch):
    import itertools
    monkeypatch.setattr(download, "_TEMP_NUMBERS", itertools.count(7))
    stale = tmp_path / f".a.jpg.{os.getpid()}-7.part"
    stale.write_bytes(b"someone else's")
    write_image(tmp_path / "a.jpg", b"mine")
    assert (tmp_path / "a.jpg").read_bytes() == b"mine"
    assert stale.read_bytes() == b"someone else's"


def test_a_failed_write_removes_its_temporary_and_keeps_the_old_file(tmp_path, monkeypatch):
    (tmp_path / "a.jpg").write_bytes(b"old")

    def full_disk(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(download.os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_image(tmp_path / "a.jpg", b"new")
    monkeypatch.undo()
    assert (tmp_path / "a.jpg").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg"]
