"""Is it an image we want? A pure function from downloaded bytes to a ``Verdict``: nothing is written here.

Order matters: cheap checks first (size, the placeholder's hash, the header's
pixel count) so that a decompression bomb is refused before OpenCV allocates
anything; then a decode that proves the file is a whole image, and the optional resize on the way
in. Without a resize the pixels are not needed, so a JPEG is checked with libjpeg's reduced-size
decode (``datakit.images.verify_image``: every entropy-coded byte is still read, so truncated and
corrupt files fail exactly as with a full decode); with a resize it is decoded at full size. Storing
the verdict's bytes is ``datakit.download.store``'s job, so that another
store (an object store, a tar shard) can take the same verdicts.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from datakit.download.options import DownloadOptions
from datakit.download.outcome import Kind
from datakit.errors import ImageError, ImageTooLarge
from datakit.images import decode_image, encode_image, resize_keep_aspect, sniff_format, verify_image


class Verdict(NamedTuple):
    """The kind, a short detail for failures, and the bytes to store (the input, or its resized copy)."""

    kind: Kind
    detail: str = ""
    data: bytes = b""

    @property
    def ok(self) -> bool:
        return self.kind == Kind.OK


def check_image(data: bytes, options: DownloadOptions, ext: str = "jpg") -> Verdict:
    """Judge downloaded bytes; `ext` ('jpg' or 'png') is the encoding of a resized copy.

    Pure: depends on its arguments only, writes nothing, safe to call from any thread.
    """
    if len(data) > options.max_bytes:
        return Verdict(Kind.TOO_LARGE, f"{len(data)} bytes > {options.max_bytes}")
    if not data:
        return Verdict(Kind.UNDECODABLE, "empty body")
    if hashlib.sha1(data).hexdigest() in options.placeholder_sha1:
        return Verdict(Kind.PLACEHOLDER, "the host's 'photo unavailable' image")
    if sniff_format(data) is None:
        return Verdict(Kind.UNDECODABLE, "not a known image format")
    try:  # both read the header first and refuse too many pixels before OpenCV allocates
        if options.resize > 0:
            img = decode_image(data, color=True, max_pixels=options.max_pixels)
        else:
            verify_image(data, max_pixels=options.max_pixels)
    except ImageTooLarge as err:
        return Verdict(Kind.TOO_LARGE if err.limit == "bytes" else Kind.TOO_MANY_PIXELS, str(err))
    except ImageError as err:
        return Verdict(Kind.UNDECODABLE, str(err))
    if options.resize > 0:
        kw = {"shorter_side": options.resize} if options.resize_mode == "shorter" else {"longer_side": options.resize}
        small = resize_keep_aspect(img, **kw)
        if small is not img:
            data = encode_image(small, ext)
    return Verdict(Kind.OK, "", data)
