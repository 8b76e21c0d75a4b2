"""Bounds on what a user's file may make the library unpack or allocate.

The service passes its settings explicitly; the library and the CLI fall back to the same
``SPA_*`` environment variables (read at call time) with the service's defaults. Stdlib only.
"""

from __future__ import annotations

import os

DEFAULT_MAX_UNPACKED = 8 * 1024**3  # also the service default (app.core.config.Settings)
DEFAULT_MAX_ZIP_RATIO = 100.0  # also the service default
RATIO_FLOOR = 1024**2  # archives that unpack to less than this are never ratio-checked


def max_unpacked_bytes() -> int:
    try:
        return max(1, int(os.environ.get("SPA_MAX_UNPACKED_BYTES", DEFAULT_MAX_UNPACKED)))
    except ValueError:
        return DEFAULT_MAX_UNPACKED


def max_zip_ratio() -> float:
    try:
        return max(1.0, float(os.environ.get("SPA_MAX_ZIP_RATIO", DEFAULT_MAX_ZIP_RATIO)))
    except ValueError:
        return DEFAULT_MAX_ZIP_RATIO
