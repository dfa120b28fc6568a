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
from datakit.db import HDF5_LIST_NAME, Reader, Record
from datakit.db.pagecache import DropBehind
from datakit.errors import DatabaseError

SLAB_BYTES = 32 << 20  # read this much of `data` at a time


def shard_name(index: int) -> str:
    return f"data_{index:05d}.h5"


def _resolve_list(list_file: Path) -> list[Path]:
    files = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        cand = Path(name)
        if not cand.is_absolute():
            beside = list_file.parent / cand
            cand = beside if beside.exists() or not cand.exists() else cand
        if not cand.exists():
            moved = list_file.parent / Path(name).name
            if moved.exists():
                cand = moved
            else:
                raise DatabaseError(f"{list_file}:{number}: HDF5 file {name!r} not found")
        files.append(cand)
    if not files:
        raise DatabaseError(f"{list_file}: lists no .h5 files")
    return files


def hdf5_files(path: Path) -> list[Path]:
    """The .h5 files of an HDF5 'database': a .h5 file, a .txt list, or a folder."""
    if path.is_dir():
        if (path / HDF5_LIST_NAME).is_file():
            return _resolve_list(path / HDF5_LIST_NAME)
        files = sorted(path.glob("*.h5"))
        if not files:
            raise DatabaseError(f"{path}: no {HDF5_LIST_NAME} and no .h5 files")
        return files
    if path.suffix.lower() == ".txt":
        return _resolve_list(path)
    return [path]


class HDF5Reader(Reader):
    """Iterate `data` / `label` of every listed file, in list order; keys are 'FILE/ROW'."""

    backend = "hdf5"

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

    def __iter__(self) -> Iterator[Record]:
        for f in self.files:
            with self._open(f) as h5:
                data, label = h5["data"], h5["label"]
                n = data.shape[0]
                row_bytes = max(1, int(np.prod(data.shape[1:], dtype=np.int64)) * 4)
                step = max(1, SLAB_BYTES // row_bytes)
                for lo in range(0, n, step):
                    hi = min(n, lo + step)
                    slab = np.asarray(data[lo:hi], dtype=np.float32)
                    if slab.ndim == 2:
                        slab = slab[:, :, None, None]
                    labels = np.asarray(label[lo:hi]).reshape(hi - lo, -1)[:, 0]
                    for i in range(hi - lo):
                        yield Record(f"{f.name}/{lo + i:08d}", int(labels[i]), slab[i], None)


class HDF5Writer:
    """Write (C x H x W image, label) into shards of `chunk` records plus list.txt.

    A shard is written under a temporary name and renamed when full, so every
    `data_NNNNN.h5` on disk is whole; `write` returns True each time a shard
    is completed: the moments a resumable conversion can record progress.
    """

    backend = "hdf5"

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

    def _tmp(self) -> Path:
        return self.folder / f".{shard_name(self.shards)}.part"

    def write(self, items: Sequence[tuple[np.ndarray, int]]) -> bool:
        completed = False
        pos = 0
        while pos < len(items):
            if self._h5 is None:
                c, h, w = items[pos][0].shape
                self._h5 = h5py.File(self._tmp(), "w")
                self._pages_fd = os.open(self._tmp(), os.O_RDONLY)
                self._pages = DropBehind(self._pages_fd)
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
