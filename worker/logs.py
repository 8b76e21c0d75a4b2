"""Worker log lines that name their job: every record logged while a task runs carries the job (or
model) id, in the text format (``[job <id>]``) or as a field of one JSON object per line
(``SPA_LOG_FORMAT=json``, for log shippers). A prefork child runs one task at a time, so the id is
a per-process value that the task's helper threads (heartbeat, progress) see too."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_current: str | None = None
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s]%(subject)s %(message)s"


@contextmanager
def about(subject: str) -> Iterator[None]:
    """Log lines inside this block name ``subject`` (e.g. "job 1f3c…")."""
    global _current
    previous, _current = _current, subject
    try:
        yield
    finally:
        _current = previous


class SubjectFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.subject = f" [{_current}]" if _current else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record), "level": record.levelname, "logger": record.name,
            "process": record.processName, "message": record.getMessage(),
        }  # fmt: skip
        if _current:
            kind, _, ident = _current.partition(" ")
            out[kind] = ident
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def install(logger: logging.Logger, fmt: str) -> None:
    """Give every handler of ``logger`` the subject filter and the chosen format ("text" | "json")."""
    for handler in logger.handlers:
        if not any(isinstance(f, SubjectFilter) for f in handler.filters):
            handler.addFilter(SubjectFilter())
        handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
