"""A progress bar on stderr for `spa wait` (a line per change when stderr is not a terminal)."""

from __future__ import annotations

import sys
from typing import Any, TextIO


class ProgressBar:
    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self.last: tuple[Any, ...] | None = None

    def update(self, job: dict[str, Any]) -> None:
        state, stage, progress = job["state"], job.get("stage") or "", float(job.get("progress") or 0.0)
        key = (state, stage, round(progress, 2)) if self.tty else (state, stage)
        if key == self.last:
            return
        self.last = key
        filled = int(round(progress * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {progress * 100:5.1f}%  {state:<10} {stage}"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(100))
            if state in ("succeeded", "failed", "cancelled"):
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
