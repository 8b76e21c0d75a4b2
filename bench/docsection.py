"""The one way a bench updates its part of a docs/ page: the text between its markers is replaced
(or appended, markers included, when absent); the rest of the page stays as it is."""

from __future__ import annotations

from pathlib import Path


def current(path: Path, begin: str, end: str) -> str:
    """The section now in ``path`` (markers included), or "" when it has none."""
    text = path.read_text() if path.exists() else ""
    b, e = text.find(begin), text.find(end)
    return text[b : e + len(end)] if b != -1 and e > b else ""


def replace(path: Path, begin: str, end: str, section: str, title: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) into ``path``; a new
    page starts with ``title``."""
    text = path.read_text() if path.exists() else f"{title}\n"
    b, e = text.find(begin), text.find(end)
    if b != -1 and e > b:
        text = text[:b] + section + text[e + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
