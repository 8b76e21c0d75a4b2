"""The zip checks live in the library (one module for the API, the worker and the CLI); this name
stays so that ``from app.zipcheck import UnsafeZip, safe_extract`` keeps working."""

from __future__ import annotations

from pruning_core.frontends.zipsafe import (
    MAX_MEMBERS,
    UnsafeZip,
    archive_size,
    check_member_name,
    check_zip,
    safe_extract,
)

__all__ = ["MAX_MEMBERS", "UnsafeZip", "archive_size", "check_member_name", "check_zip", "safe_extract"]
