"""``AssembleConfig``: everything `datakit assemble` was asked to do, with its own ``validate()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datakit.download.options import DownloadOptions
from datakit.errors import ConfigError


@dataclass
class AssembleConfig:
    """Everything `datakit assemble` was asked to do."""

    manifest: str = "flickr_style"
    out: Path = Path("data/flickr_style")
    images: int = -1
    seed: int = 0
    labels: int = 0
    mirror: str | None = None
    rewrite: str | None = None
    absolute_paths: bool = False
    report: Path | None = None
    retry_failed: bool = False
    dead_after: int = 300              # the first N attempts all failing stops the run (0 or less: never)
    partition_size: int = 1000         # jobs per partition, the unit an executor runs
    url_column: str | None = None
    label_column: str | None = None
    split_column: str | None = None
    cache_dir: Path | None = None
    progress: bool | None = None       # None: when stderr is a terminal
    options: DownloadOptions = field(default_factory=DownloadOptions)

    def validate(self) -> AssembleConfig:
        """Refuse options that cannot work, naming the option; returns self. Nothing is read or written."""
        self.options.validate()
        if self.partition_size < 1:
            raise ConfigError(f"--partition-size {self.partition_size}: must be positive")
        if self.images == 0 or self.images < -1:
            raise ConfigError(f"--images {self.images}: expected a positive count, or -1 for all rows")
        if self.labels < 0:
            raise ConfigError(f"--labels {self.labels}: expected a positive count of labels to keep (0: all)")
        return self
