"""What a conversion is asked to do and what it reports: options (with their checks) and the summary.

Light on purpose (no OpenCV, no NumPy): the command line reads ENCODE_TYPES
to build its parser.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from datakit.db import BACKENDS
from datakit.errors import ConfigError
from datakit.limits import DEFAULT_MAX_PIXELS

__all__ = ["ENCODE_TYPES", "ConvertOptions", "ConvertSummary", "Skipped"]

ENCODE_TYPES = ("jpg", "jpeg", "png", "bmp")


@dataclass
class ConvertOptions:
    """convert_imageset's flags (same meanings) plus ours for speed and safety."""

    backend: str = "lmdb"
    resize_height: int = 0
    resize_width: int = 0
    gray: bool = False
    shuffle: bool = False
    seed: int | None = None
    encoded: bool = False
    encode_type: str = ""
    check_size: bool = False
    hdf5_chunk: int = 1000      # records per shard, for backends that write shards (HDF5)
    allow_absolute: bool = False
    workers: int = 0            # 0 = all cores
    commit_every: int = 1000    # records per transaction, as convert_imageset...
    commit_bytes: int = 8 << 20  # ...or fewer when they add up to this much (bounds the memory in flight)
    checkpoint_every: int = 4   # a checkpoint (flush to disk, then save the resume point) every
    checkpoint_bytes: int = 64 << 20  # checkpoint_every * commit_every records or this much, if sooner
    strict: bool = False
    resume: bool = False
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool | None = None  # None: a progress bar when stderr is a terminal

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if not BACKENDS[self.backend].writable:
            writable = ", ".join(b.name for b in BACKENDS.values() if b.writable)
            raise ConfigError(f"--backend {self.backend}: not written record by record (give one of {writable}; "
                              "--scheduler/--cluster writes shards of lmdb/leveldb)")
        if self.resize_height < 0 or self.resize_width < 0:
            raise ConfigError("--resize-height/--resize-width must be >= 0 (0 keeps the size)")
        if (self.resize_height > 0) != (self.resize_width > 0):
            raise ConfigError("give both --resize-height and --resize-width (convert_imageset resizes only "
                              "when both are > 0 and would silently ignore one alone)")
        if self.resize_height * self.resize_width > self.max_pixels:  # every image would fail to resize
            raise ConfigError(f"--resize-height {self.resize_height} --resize-width {self.resize_width} is "
                              f"{self.resize_height * self.resize_width} pixels a record, more than the limit of "
                              f"{self.max_pixels}; Caffe's recipes resize to 256x256")
        if self.encode_type and not self.encoded:
            raise ConfigError("--encode-type needs --encoded")
        if self.encode_type and self.encode_type.lower() not in ENCODE_TYPES:
            raise ConfigError(f"--encode-type {self.encode_type!r}: expected one of {', '.join(ENCODE_TYPES)}")
        if self.encoded and BACKENDS[self.backend].record_kind != "datum":
            datum = "/".join(b.name for b in BACKENDS.values() if b.record_kind == "datum")
            raise ConfigError(f"--encoded is for {datum}; {self.backend.upper()} stores float pixels")
        if self.commit_every <= 0 or self.hdf5_chunk <= 0 or self.checkpoint_every <= 0:
            raise ConfigError("--commit-every, --checkpoint-every and --hdf5-chunk must be positive")
        if self.workers < 0:
            raise ConfigError("--workers must be >= 0 (0 = all cores)")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: choose one")


@dataclass
class Skipped:
    """One list entry that was not converted, and why."""

    index: int
    line: int
    path: str
    reason: str


@dataclass
class ConvertSummary:
    db: str
    backend: str
    listed: int
    written: int
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    shapes: list[list[int]] = field(default_factory=list)
    seed: int | None = None
    resumed_at: int | None = None
    already_complete: bool = False
    warnings: list[str] = field(default_factory=list)  # every warning about the list (duplicates, labels)

    def line(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.shapes[:3]) + (" ..." if len(self.shapes) > 3 else "")
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        resumed = f", resumed at record {self.resumed_at}" if self.resumed_at else ""
        return (f"{self.db}: {self.written} records written ({self.backend}"
                f"{', ' + shapes if shapes else ''}), {len(self.skipped)} skipped of {self.listed} listed, "
                f"{self.seconds:.1f} s ({rate:.0f} images/s){resumed}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_progress(cls, final: str, done: dict) -> ConvertSummary:
        """The summary of a finished conversion, from its progress file (--resume on a complete database)."""
        s = done.get("summary", {})
        return cls(final, done["options"]["backend"], s.get("listed", 0), s.get("written", 0),
                   [Skipped(**k) for k in done.get("skipped", [])], 0.0, s.get("shapes", []),
                   done["options"].get("seed"), None, True)
