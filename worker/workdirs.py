"""Private working folders of jobs and validations (``spa-job-*``, ``spa-validate-*``).

Each holds a copy of an uploaded model, so none may outlive its task. The task removes its folder
in ``finally``; a worker killed outright (SIGKILL, OOM) cannot, so every folder carries a marker
naming its owner (host, pid, process start time) and a starting worker removes the folders whose
owner is gone. The start time tells a dead owner from a new process that reuses its pid; the host
keeps workers of other machines (or PID namespaces) sharing one /tmp from judging each other.

Layout (the sandboxed child may write only where marked, see worker/sandbox.py):

    spa-job-XXXX/     the task's, mode 0711 when a sandbox user is used
      .owner          marker (JSON)
      request.json    what the child is asked to do
      child.log       the child's stdout / stderr
      in/             the model (and data) fetched from storage        (child: read)
      out/            artifacts                                        (child: write)
      run/            the child's HOME, TMPDIR (run/tmp), result.json  (child: write)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

log = logging.getLogger("spa.worker")

PREFIXES = ("spa-job-", "spa-validate-")
MARKER = ".owner"
UNMARKED_GRACE_S = 300.0  # a folder without a marker may be one being created right now


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """The process start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _owner() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def make(kind: str) -> Path:
    """A new private folder ``spa-<kind>-*`` in the temp dir, marked as this process's."""
    path = Path(tempfile.mkdtemp(prefix=f"spa-{kind}-"))
    (path / MARKER).write_text(json.dumps(_owner()))
    for sub in ("in", "out", "run", "run/tmp"):
        (path / sub).mkdir()
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)  # fd-based: safe against symlinks the child planted


def _alive(owner: dict[str, object]) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, someone else's
    fields = _stat(pid)
    if fields is None:
        return True  # no /proc to tell: assume it lives
    if fields[0] in ("Z", "X"):
        return False  # killed, not yet reaped (a PID 1 that reaps late)
    start = owner.get("start")
    return start is None or fields[19] == start


def remove_stale(base: Path | None = None) -> list[Path]:
    """Remove the work folders in ``base`` (the temp dir) whose owning process is gone."""
    base = Path(base or tempfile.gettempdir())
    host = socket.gethostname()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(PREFIXES) or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        try:
            owner = json.loads((path / MARKER).read_text())
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if time.time() - entry.stat(follow_symlinks=False).st_mtime > UNMARKED_GRACE_S:
                    remove(path)
                    removed.append(path)
            continue
        except (OSError, ValueError):
            continue
        if not isinstance(owner, dict) or owner.get("host") != host or _alive(owner):
            continue
        remove(path)
        removed.append(path)
    if removed:
        log.warning("removed %d work folder(s) left by dead workers: %s", len(removed),
                    ", ".join(p.name for p in removed))
    return removed
