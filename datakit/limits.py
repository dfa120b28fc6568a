"""Safety limits for images from the web (both can be raised by the caller); no imports, for option defaults."""

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
