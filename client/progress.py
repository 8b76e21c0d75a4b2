"""A progress bar on stderr for `spa wait` / `spa submit --wait`.

On a terminal: one bar redrawn in place. Elsewhere (a pipe, a CI log, a file): plain lines, one per
change of state or stage, and one every ``every_s`` seconds while the progress moves within a long
stage, so a log shows the job is alive without a line per poll.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

FINAL = ("succeeded", "failed", "cancelled")


class ProgressBar:
    def __init__(
        self,
        stream: TextIO | None = None,
        width: int = 30,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.every_s, self.clock = every_s, clock
        self.tty = self.stream.isatty()
        self.last: tuple[Any, ...] | None = None
        self.last_progress = -1.0
        self.last_at = float("-inf")

    def update(self, job: dict[str, Any]) -> None:
        state, stage, progress = job["state"], job.get("stage") or "", float(job.get("progress") or 0.0)
        key = (state, stage, round(progress, 2)) if self.tty else (state, stage)
        now = self.clock()
        # Off a terminal the same stage prints again only when it moved and enough time went by.
        periodic = (not self.tty and key == self.last and progress != self.last_progress
                    and now - self.last_at >= self.every_s)
        if key == self.last and not periodic:
            return
        self.last, self.last_progress, self.last_at = key, progress, now
        filled = int(round(progress * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {progress * 100:5.1f}%  {state:<10} {stage}".rstrip()
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(100))
            if state in FINAL:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
