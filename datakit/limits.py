"""Safety limits for images from the web, shared by the decoder and the downloader's options.

A leaf module (it imports nothing), so that option classes and command-line
help can name the defaults without loading OpenCV.
"""

# Default limits for images from the web; both can be raised by the caller.
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
