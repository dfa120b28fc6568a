"""HDF5: what Caffe's HDF5Data layer reads.

Its ``source`` is a text file listing .h5 files, one per line; each file has
``data`` (float N x C x H x W) and ``label`` (N or N x 1). Caffe loads a whole
file into memory at a time, so `datakit convert` writes shards of
``--hdf5-chunk`` records (``data_00000.h5``, ...) and a ``list.txt`` naming
them by absolute path (Caffe opens them relative to its working directory,
so absolute paths work from anywhere); our reader also finds shards beside
the list when the folder has been moved.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Iterator, Sequence

import h5py
import numpy as np

from datakit.atomic import write_text_atomic
from datakit.db import HDF5_LIST_NAME
from datakit.db.base import SLAB_BYTES, Reader, Writer
from datakit.db.pagecache import DropBehind
from datakit.db.reserve import allocate, free_bytes, no_space
from datakit.errors import DatabaseError, DiskFull, MissingDatabase

__all__ = ["HDF5Reader", "HDF5Writer", "SLAB_BYTES", "hdf5_files", "read_hdf5_list", "shard_name"]


def shard_name(index: int) -> str:
    return f"data_{index:05d}.h5"


def _list_text(list_file: Path) -> str:
    """The text of an HDF5 list (a leading UTF-8 BOM dropped); DatabaseError when it is not a text file.

    Naming a .h5 data file as HDF5Data's `source` (it wants the list of them)
    is a common mistake, so that case gets its own message.
    """
    try:
        if list_file.is_file() and h5py.is_hdf5(list_file):
            raise DatabaseError(f"{list_file}: source must be a text file listing .h5 files, one per line; "
                                f"{list_file} is an HDF5 file itself")
        return list_file.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise DatabaseError(f"{list_file}: cannot read the HDF5 list ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise DatabaseError(f"{list_file}: not a text file listing .h5 files, one per line "
                            f"({err.reason} at byte {err.start})") from None


def read_hdf5_list(list_file: Path, base_dir: Path | None = None) -> list[Path]:
    """The .h5 files a Caffe HDF5 list names: the one parser of these lists (datakit and the trainer).

    One path per line; blank lines and lines starting with '#' are skipped. A
    relative path is looked for, in order, under `base_dir` (the trainer's
    stand-in for Caffe's working directory), beside the list, under this
    process's working directory, and finally by its file name beside the list
    (a folder that was moved after ``datakit convert`` wrote absolute paths).
    """
    text = _list_text(list_file)
    files = []
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        given = Path(name)
        if given.is_absolute():
            candidates = [given]
        else:
            candidates = ([base_dir / given] if base_dir is not None else []) + [list_file.parent / given, given]
        candidates.append(list_file.parent / given.name)
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise MissingDatabase(f"{list_file}:{number}: HDF5 file {name!r} not found")
        files.append(found)
    if not files:
        raise DatabaseError(f"{list_file}: lists no .h5 files")
    return files


def hdf5_files(path: Path) -> list[Path]:
    """The .h5 files of an HDF5 'database': a .h5 file, a .txt list, or a folder."""
    if path.is_dir():
        if (path / HDF5_LIST_NAME).is_file():
            return read_hdf5_list(path / HDF5_LIST_NAME)
        files = sorted(path.glob("*.h5"))
        if not files:
            raise DatabaseError(f"{path}: no {HDF5_LIST_NAME} and no .h5 files")
        return files
    if path.suffix.lower() == ".txt":
        return read_hdf5_list(path)
    return [path]


class HDF5Reader(Reader):
    """Iterate `data` / `label` of every listed file, in list order; keys are 'FILE/ROW'."""

    backend = "hdf5"
    record_kind = "array"

    def __init__(self, path: str | os.PathLike, *, decode: bool = False, color: bool | None = True) -> None:
        super().__init__(path, decode=decode, color=color)
        self.files = hdf5_files(self.path)
        self._counts: list[int] = []
        for f in self.files:
            with self._open(f) as h5:
                self._counts.append(self._check(f, h5))

    @staticmethod
    def _open(f: Path) -> h5py.File:
        try:
            return h5py.File(f, "r")
        except OSError as err:
            raise DatabaseError(f"{f}: cannot open as HDF5 ({err})") from None

    @staticmethod
    def _check(f: Path, h5: h5py.File) -> int:
        for name in ("data", "label"):
            if name not in h5:
                raise DatabaseError(f"{f}: no '{name}' dataset (Caffe's HDF5Data needs 'data' and 'label')")
        n, m = h5["data"].shape[0], h5["label"].shape[0]
        if n != m:
            raise DatabaseError(f"{f}: 'data' has {n} rows but 'label' has {m}")
        return int(n)

    def __len__(self) -> int:
        return sum(self._counts)

    def shapes(self) -> list[tuple[int, ...]]:
        """The per-record shape of `data` in each file."""
        out = []
        for f in self.files:
            with self._open(f) as h5:
                out.append(tuple(h5["data"].shape[1:]))
        return out

    def slabs(self, max_bytes: int = SLAB_BYTES) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """(FILE/ROW of the first row, float32 N x C x H x W, N labels), about `max_bytes` of data each."""
        for f in self.files:
            with self._open(f) as h5:
                data, label = h5["data"], h5["label"]
                n = data.shape[0]
                row_bytes = max(1, int(np.prod(data.shape[1:], dtype=np.int64)) * 4)
                step = max(1, max_bytes // row_bytes)
                for lo in range(0, n, step):
                    hi = min(n, lo + step)
                    slab = np.asarray(data[lo:hi], dtype=np.float32)
                    if slab.ndim == 2:
                        slab = slab[:, :, None, None]
                    labels = np.asarray(label[lo:hi]).reshape(hi - lo, -1)[:, 0].astype(np.int64)
                    yield f"{f.name}/{lo:08d}", slab, labels


class HDF5Writer(Writer):
    """Write (C x H x W image, label) into shards of `chunk` records plus list.txt.

    A shard is written under a temporary name and renamed when full, so every
    `data_NNNNN.h5` on disk is whole; `write` returns True each time a shard
    is completed: the moments a resumable conversion can record progress
    (``progress_state()`` then says how many shards are whole). Shards are
    this writer's business: callers see the Writer protocol only.
    """

    backend = "hdf5"
    record_kind = "array"
    syncs = False      # a partial shard is never durable: only completed shards count
    one_shape = True   # one `data` dataset per shard

    def __init__(self, folder: str | os.PathLike, *, chunk: int = 1000) -> None:
        if chunk <= 0:
            raise DatabaseError(f"--hdf5-chunk must be positive, got {chunk}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.chunk = chunk
        self.shards = len(sorted(self.folder.glob("data_*.h5")))
        for stale in self.folder.glob(".data_*.h5.part"):
            stale.unlink()
        self._h5: h5py.File | None = None
        self._pages_fd: int | None = None  # the shard being written, for page-cache control
        self._pages: DropBehind | None = None
        self._rows = 0
        self.shape: tuple[int, ...] | None = None
        if self.shards:
            with h5py.File(self.folder / shard_name(0), "r") as h5:
                self.shape = tuple(h5["data"].shape[1:])

    @property
    def rows(self) -> int:
        """Records in the shard being written (not yet on disk under its final name)."""
        return self._rows

    def batch_limit(self, handed: int, commit_every: int) -> int:
        """No batch crosses a shard boundary, so that each completed shard is a durable point."""
        return min(commit_every, self.chunk - handed % self.chunk)

    def progress_state(self) -> dict:
        return {"shards": self.shards}

    def count(self) -> int:
        """Records in the completed shards 0 .. shards-1 (a missing one holds none)."""
        total = 0
        for index in range(self.shards):
            path = self.folder / shard_name(index)
            if path.exists():
                with h5py.File(path, "r") as h5:
                    total += int(h5["data"].shape[0])
        return total

    def resume(self, progress: dict) -> None:
        """Remove the shards completed after the saved progress: their records are redone."""
        keep = int(progress.get("shards", 0))
        index = keep
        while (self.folder / shard_name(index)).exists():
            (self.folder / shard_name(index)).unlink()
            index += 1
        self.shards = keep

    def _tmp(self) -> Path:
        return self.folder / f".{shard_name(self.shards)}.part"

    def write(self, items: Sequence[tuple[np.ndarray, int]]) -> bool:
        completed = False
        pos = 0
        while pos < len(items):
            if self._h5 is None:
                c, h, w = items[pos][0].shape
                self._open_shard(c, h, w)
                assert self._h5 is not None
                self._h5.create_dataset("data", shape=(self.chunk, c, h, w), maxshape=(self.chunk, c, h, w),
                                        dtype="f4", chunks=(1, c, h, w))
                self._h5.create_dataset("label", shape=(self.chunk,), maxshape=(self.chunk,), dtype="f4")
                self._rows = 0
            take = min(len(items) - pos, self.chunk - self._rows)
            batch = items[pos:pos + take]
            slab = np.empty((take, *batch[0][0].shape), np.float32)
            for i, (img, _) in enumerate(batch):
                slab[i] = img  # uint8 -> float32 in one pass (np.stack then astype copied twice)
            self._h5["data"][self._rows:self._rows + take] = slab
            self._h5["label"][self._rows:self._rows + take] = np.array([lab for _, lab in batch], dtype=np.float32)
            self._rows += take
            pos += take
            # 786 KB of float32 per 256x256 image: start writing it now and drop what is on disk,
            # so the shard's fsync does not wait for all of it and the page cache stays small.
            if self._pages is not None and self._pages_fd is not None:
                self._pages.advance(os.fstat(self._pages_fd).st_size)
            if self._rows == self.chunk:
                self._finish_shard()
                completed = True
        return completed

    def _open_shard(self, c: int, h: int, w: int) -> None:
        """Start the next shard, its disk space reserved first (DiskFull, naming it, when there is none).

        HDF5 reports a full disk as an error but may then crash when the file
        is closed, so no shard is begun that the file system cannot hold:
        the free space is checked before the file is made, and its blocks are
        reserved (fallocate, keeping the file's size) before any data goes in.
        """
        tmp = self._tmp()
        needed = self.chunk * (c * h * w * 4 + 4 + 64) + (256 << 10)  # data, labels, chunk index, headers
        what = f"shard {self.shards} ({self.chunk} records of {c}x{h}x{w} float32)"
        if free_bytes(self.folder) < needed:
            raise no_space(tmp, needed, what)
        try:
            self._h5 = h5py.File(tmp, "w")
        except OSError as err:
            raise DiskFull(f"{tmp}: cannot create the shard ({err})") from None
        self._pages_fd = os.open(tmp, os.O_RDWR)
        self._pages = DropBehind(self._pages_fd)
        size = os.fstat(self._pages_fd).st_size
        if allocate(self._pages_fd, size, needed, keep_size=True) is False:
            self.close()
            raise no_space(tmp, needed, what)

    def _finish_shard(self) -> None:
        assert self._h5 is not None
        if self._rows < self.chunk:
            self._h5["data"].resize(self._rows, axis=0)
            self._h5["label"].resize(self._rows, axis=0)
        self._h5.flush()
        self._h5.close()
        self._h5 = None
        self._close_pages()
        tmp = self._tmp()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.folder / shard_name(self.shards))
        self.shards += 1
        self._rows = 0

    def finish(self, final_folder: str | os.PathLike) -> None:
        """Close the last, partial shard and write list.txt naming the shards at `final_folder`."""
        if self._h5 is not None and self._rows:
            self._finish_shard()
        final = Path(final_folder).resolve()
        names = [str(final / shard_name(i)) for i in range(self.shards)]
        write_text_atomic(self.folder / HDF5_LIST_NAME, "".join(n + "\n" for n in names))

    def _close_pages(self) -> None:
        if self._pages_fd is not None:
            os.close(self._pages_fd)
            self._pages_fd = self._pages = None

    def close(self) -> None:
        self._close_pages()
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
            self._tmp().unlink(missing_ok=True)


def open_writer(folder: str | os.PathLike, *, shard_records: int = 1000) -> HDF5Writer:
    return HDF5Writer(folder, chunk=shard_records)
