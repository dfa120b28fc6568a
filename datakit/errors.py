"""Typed exceptions shared by every stage.

Library code raises these with a one-line message that already names the
file, line, record or layer at fault and what was expected; the CLI prints the
message as it is and exits non-zero. Keeping the wording in the exception (not
in the CLI) means the same clear line reaches API users too.
"""

from __future__ import annotations


class DatakitError(Exception):
    """Base class: str(err) is the complete one-line message for the user."""

    exit_code: int = 1


class FormatError(DatakitError):
    """A Caffe file (prototxt, binaryproto, caffemodel, Datum) is malformed."""


class ListError(DatakitError):
    """An image list file has bad lines (labels, paths, duplicates)."""


class ImageError(DatakitError):
    """An image could not be read, decoded or failed validation."""


class ImageTooLarge(ImageError):
    """An image has more bytes or pixels than the limit; `limit` says which ("bytes" or "pixels")."""

    def __init__(self, message: str, limit: str = "pixels") -> None:
        super().__init__(message)
        self.limit = limit


class DatabaseError(DatakitError):
    """A database is missing, incomplete, or not what was expected."""


class CorruptDatabase(DatabaseError):
    """A database's own files are damaged (its storage engine found bad pages), not merely unexpected."""


class MissingFile(DatakitError):
    """Raised as one of the subclasses below: a file or database the input names does not exist.

    A caller that knows where the name came from (a layer of a net, relative
    to which folder) adds that to the message; the class, not the message's
    wording, says the error is of this kind (trainer.net.graph).
    """


class MissingFormatFile(MissingFile, FormatError):
    """A prototxt, binaryproto, caffemodel or other Caffe file that is named is not there."""


class MissingDatabase(MissingFile, DatabaseError):
    """A database (or a file an HDF5 list names) that is named is not there."""


class MissingListFile(MissingFile, ListError):
    """An image list (or an index file) that is named is not there."""


class DownloadError(DatakitError):
    """Downloading a manifest or its images failed as a whole."""


class ConfigError(DatakitError):
    """Command-line options or parameters contradict each other or are out of range."""


class DiskFull(DatabaseError):
    """The file system ran out of space before a write; what was made durable before it is kept."""
