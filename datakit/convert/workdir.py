"""The work folder of a conversion: where it is built, when it may resume or overwrite, how it is installed.

A database is built at ``DB.incomplete`` with a progress file inside
(``datakit-convert.json``) and renamed to ``DB`` only when it is complete, so
an interruption never leaves a database that looks whole, and ``--resume``
finishes it with the same bytes an uninterrupted run would have written. The
progress file never claims a record that is not on disk: it is saved only at
a durable point of the writer (see datakit.db.base.Writer).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from datakit.atomic import install_dir, raise_if_disk_full, write_text_atomic
from datakit.outputlock import OutputLock
from datakit.db import PROGRESS_NAME, detect_backend, incomplete_path, read_progress
from datakit.errors import ConfigError, DatabaseError

if TYPE_CHECKING:
    from datakit.convert.options import ConvertOptions

__all__ = ["AlreadyComplete", "RESUME_KEYS", "WorkDir", "check_resumable"]

# Options that decide the bytes written; a resumed run must use the same ones.
RESUME_KEYS = ("backend", "resize_height", "resize_width", "gray", "shuffle", "seed", "encoded",
               "encode_type", "check_size", "hdf5_chunk", "allow_absolute")


class AlreadyComplete(Exception):
    """--resume found the database already finished; `progress` is its final progress file."""

    def __init__(self, progress: dict) -> None:
        super().__init__("already complete")
        self.progress = progress


def _is_ours_or_db(path: Path) -> bool:
    """Whether `path` may be replaced by --overwrite: a database or a folder this tool made."""
    if path.is_dir() and (path / PROGRESS_NAME).exists():
        return True
    try:
        detect_backend(path)
        return True
    except DatabaseError:
        return path.is_dir() and not any(path.iterdir())


class WorkDir:
    """``FINAL.incomplete`` and its progress file.

    `on_save(state)` is called after every save of the progress file (with
    the state saved), for callers that watch the checkpoints. ``open()`` takes the
    output's lock (``datakit.outputlock``: one conversion per output at a time);
    the caller calls ``release()`` when the conversion ends, however it ends.
    """

    def __init__(self, final: str | Path, *, on_save: Callable[[dict], None] | None = None) -> None:
        self.final = Path(final)
        if self.final.suffix.lower() == ".incomplete":
            raise ConfigError(f"{self.final}: name the database without '.incomplete' "
                              "(that is where unfinished work lives)")
        self.path = incomplete_path(self.final)
        self.state: dict = {}
        self.on_save = on_save
        self.lock = OutputLock(self.final)

    def open(self, *, resume: bool, overwrite: bool) -> dict | None:
        """The progress of the interrupted conversion to continue, or None to start afresh.

        Refuses (DatabaseError) what would lose or hide work: a finished
        database without --overwrite, interrupted work without --resume or
        --overwrite, something that is not a database. With --overwrite the
        interrupted work is removed here; the old database only at install().
        With --resume on a finished database, raises AlreadyComplete.
        """
        final, work = self.final, self.path
        self.lock.acquire()  # before reading anything: another run's state may be changing under us
        prior = read_progress(work) if work.is_dir() else None
        if resume:
            if prior is None and final.exists():
                done = read_progress(final) if final.is_dir() else None
                if done is not None and done.get("status") == "complete":
                    raise AlreadyComplete(done)
                raise DatabaseError(f"{final}: exists and has no unfinished conversion to resume; "
                                    "use --overwrite to convert again")
            if prior is None and work.exists():
                raise DatabaseError(f"{work}: unfinished conversion without a progress file; delete it and start over")
            return prior
        if work.exists():
            if not overwrite:
                raise DatabaseError(f"{work}: an interrupted conversion is there; pass --resume to finish it "
                                    "or --overwrite to start over")
            if prior is None:
                raise DatabaseError(f"{work}: not made by datakit convert; remove it yourself")
            shutil.rmtree(work)
        if final.exists() and not _is_ours_or_db(final):
            # Checked first, with or without --overwrite: suggesting --overwrite here would lead to a refusal.
            what = "a file" if not final.is_dir() else "a folder that is not a database"
            raise DatabaseError(f"{final}: exists and is {what}; refusing to replace it (--overwrite replaces "
                                "only a database): move it away or name another output database")
        if final.exists() and not overwrite:
            raise DatabaseError(f"{final}: already exists; pass --overwrite to replace it "
                                "(it is replaced only once the new database is complete)")
        return None

    def start(self, state: dict) -> None:
        """Create the work folder and save the first progress file."""
        try:
            self.path.mkdir(parents=True)
        except OSError as err:
            raise_if_disk_full(err, self.path)
            raise
        self.state = state
        try:
            self.save()
        except BaseException:  # a disk without room for even the progress file: leave nothing half-made
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def continue_from(self, state: dict) -> None:
        self.state = state

    def save(self, **changes: object) -> None:
        """Update the progress state and write it atomically."""
        self.state.update(changes)
        write_text_atomic(self.path / PROGRESS_NAME, json.dumps(self.state, indent=1) + "\n")
        if self.on_save is not None:
            self.on_save(self.state)

    def release(self) -> None:
        """Let another conversion into this output start (idempotent)."""
        self.lock.release()

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def install(self) -> None:
        """Rename the finished database into place; an old one (--overwrite) goes only after that."""
        install_dir(self.path, self.final)


def check_resumable(prior: dict, options: ConvertOptions, fingerprint: dict, work: Path, *,
                    finished: bool = False) -> None:
    """Refuse (ConfigError) to resume with another list, root or byte-deciding option.

    ``finished``: ``prior`` is a complete database's progress. ``--resume`` on it does nothing, which
    is right only when it was made from this list with these options; otherwise the user would take
    the old database for the one just asked for.
    """
    since = "since the database was made" if finished else "since the interrupted run"
    again = "use --overwrite to convert again" if finished else "use --overwrite to start over"
    changed = [k for k in ("list_sha256", "root") if prior.get(k) != fingerprint[k]]
    if changed:
        what = "the list file changed" if "list_sha256" in changed else "the image root changed"
        raise ConfigError(f"{work}: cannot resume: {what} {since}; {again}")
    before = prior.get("options", {})
    diffs = [f"{k}={before.get(k)!r} (now {getattr(options, k)!r})" for k in RESUME_KEYS
             if k != "seed" and before.get(k) != getattr(options, k)]
    seed = options.seed
    if seed is not None and before.get("seed") != seed:
        diffs.append(f"seed={before.get('seed')!r} (now {seed!r})")
    if diffs:
        made = "it is complete, made with other options" if finished else "cannot resume with different options"
        raise ConfigError(f"{work}: {made}: " + ", ".join(diffs) + (f"; {again}" if finished else ""))
