"""The worker's latency table cache (pruning_core.runtime.latency), kept across jobs.

A job runs sandboxed with its own HOME (``run/``) and no write access outside its folder, so the
worker is the cache's only writer: before a prune it copies the cache into the job's HOME, after
it takes back what the job measured. A job is untrusted, so only new keys are taken, only finite
positive milliseconds, from files of bounded size: a crafted job can add wrong timings of shapes
nobody measured yet (it cannot run code or overwrite a measurement), and those only steer which
channels another job removes, never whether its result is verified.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

IN_JOB = Path(".cache") / "spa" / "latency"       # under the job's HOME (pruning_core's default)
NAME = re.compile(r"^[0-9a-f]{24}\.json$")
MAX_FILE_BYTES = 8 << 20
MAX_FILES = 256
MAX_MS = 1e7


def seed(cache_dir: Path, home: Path) -> None:
    """Copy the cache into a job's HOME before it runs."""
    dst = home / IN_JOB
    try:
        files = sorted(p for p in cache_dir.iterdir() if NAME.match(p.name))[:MAX_FILES] if cache_dir.is_dir() else []
        if not files:
            return
        dst.mkdir(parents=True, exist_ok=True)
        for p in files:
            (dst / p.name).write_bytes(p.read_bytes())
    except OSError:  # a cache is an optimization: never a job failure
        log.warning("seeding the latency cache failed", exc_info=True)


def collect(cache_dir: Path, home: Path) -> int:
    """Merge the job's new measurements into the cache; returns how many were added."""
    src = home / IN_JOB
    added = 0
    try:
        if not src.is_dir() or src.is_symlink():
            return 0
        cache_dir.mkdir(parents=True, exist_ok=True)
        for p in sorted(src.iterdir())[:MAX_FILES]:
            if not NAME.match(p.name) or p.is_symlink() or not p.is_file() or p.stat().st_size > MAX_FILE_BYTES:
                continue
            added += _merge(cache_dir / p.name, p)
    except OSError:
        log.warning("collecting the latency cache failed", exc_info=True)
    return added


def _merge(dst: Path, src: Path) -> int:
    try:
        theirs = json.loads(src.read_bytes())
        ours = json.loads(dst.read_bytes()) if dst.is_file() else {}
    except ValueError:
        return 0
    if not isinstance(theirs, dict) or not isinstance(ours, dict):
        return 0
    new = {k: float(v) for k, v in theirs.items()
           if k not in ours and isinstance(k, str) and re.fullmatch(r"[0-9a-f]{32}", k)
           and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v < MAX_MS}
    if not new:
        return 0
    tmp = dst.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**ours, **new}))
    os.replace(tmp, dst)
    return len(new)
