"""datakit.atomic: files and folders that appear whole, with the mode open() would give them."""

from __future__ import annotations

import hashlib
import os

import pytest

from datakit.atomic import install_dir, sha256_file, write_bytes_atomic
from datakit.imagelist import write_list


def test_written_files_get_the_umask_mode_not_0600(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        import datakit.atomic as atomic

        atomic._umask = None  # re-read the umask set above
        path = tmp_path / "list.txt"
        write_list(path, [("a.jpg", 0)])
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
        atomic._umask = None


def test_install_dir_replaces_the_old_folder_only_after_the_rename(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "new").write_text("new")
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "old").write_text("old")
    install_dir(tmp_path / "work", tmp_path / "final")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert [p.name for p in (tmp_path / "final").iterdir()] == ["new"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    write_bytes_atomic(path, b"old")
    with pytest.raises(TypeError):
        write_bytes_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old" and not list(tmp_path.glob(".*.part"))


def test_sha256_file(tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "x").write_bytes(data)
    assert sha256_file(tmp_path / "x") == hashlib.sha256(data).hexdigest()
