"""Where a validated image goes: its final name, whole or not at all.

``write_image`` keeps the promise of ``datakit.atomic.write_bytes_atomic`` (a
killed run never leaves a partial file under the final name; temporaries are
``.NAME.*.part``, removed by the next run) in the fewest system calls: it runs
for every downloaded image, and mkstemp's random names, the folder check, a
buffered file object and a chmod cost more CPU per small image than decoding
it (figures in benchmarks/RESULTS.md, assemble). The file gets the mode open()
gives (0o666 less the umask), as a plainly written file would.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

_TEMP_NUMBERS = itertools.count()


def write_image(dest: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write `data` to `dest` through a temporary name in the same folder, then rename it into place."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = dest.parent / f".{dest.name}.{os.getpid()}-{next(_TEMP_NUMBERS)}.part"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # left by a killed run with the same pid: take the next number
            continue
        except FileNotFoundError:
            dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def image_ext(dest: Path) -> str:
    """The encoding a resized copy of `dest` gets: PNG for .png names, JPEG otherwise."""
    return "png" if dest.suffix.lower() == ".png" else "jpg"
