"""The sandboxed child: ``python -P -s -m worker.sandbox_child request.json`` in a work folder.

Why a separate program: an uploaded model is a program (a .pt2 is a pickle archive), so it is
parsed and pruned in a process that holds no database URL, no broker, no storage credentials and
no network, under resource limits and, when the worker is root, as an unprivileged user
(``worker.confine``). It imports only the stdlib until it is confined, and never ``app``.

Protocol (``worker.sandbox`` is the other side): the request names the operation (``analyze`` or
``prune``) and paths relative to the work folder; progress goes to the pipe ``progress_fd`` as
JSON lines ``{"stage", "fraction", "message"}``; the result -- ``{"ok": true, ...}`` or
``{"ok": false, "error": {"code", "message"}}`` -- is written to ``run/result.json``.

``execute`` is also what the worker runs in-process when the sandbox is off (SPA_SANDBOX=0).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULT = "run/result.json"
Progress = Callable[[str, float, str | None], None]
INTERNAL = {"prune": "internal error", "analyze": "internal error while analysing the model"}
_UNAVAILABLE = {"prune": "the pruning library is not installed on this worker",
                "analyze": "model analysis is not available on this worker"}
# Words with which allocators (glibc, the dynamic loader, torch, onnxruntime) report a refused
# allocation; under RLIMIT_AS these mean the job's memory limit was reached.
MEMORY_WORDS = ("cannot allocate memory", "failed to map segment", "bad_alloc", "bad allocation",
                "can't allocate memory", "failed to allocate memory", "out of memory", "memoryerror",
                "memory allocation", "unable to allocate", "resource temporarily unavailable")


def gib(n: int) -> str:
    return f"{n / 1024**3:.3g} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


def memory_message(limit: int) -> str:
    return f"the job ran out of its memory limit of {gib(limit)} (SPA_JOB_MEMORY_BYTES)"


def cpu_message(limit: int) -> str:
    return f"the job used up its CPU time limit of {limit} s (SPA_JOB_CPU_SECONDS)"


def file_message(limit: int) -> str:
    return f"the job tried to write a file larger than its limit of {gib(limit)} (SPA_JOB_FILE_BYTES)"


def looks_like_memory(text: str) -> bool:
    low = text.lower()
    return any(w in low for w in MEMORY_WORDS)


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in out and len(out) < 10:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def classify(e: BaseException, op: str, limits: dict[str, int] | None) -> dict[str, str]:
    """The error a failed operation reports: {code, message}, one sentence."""
    from pruning_core.errors import PruneError

    limits = limits or {}
    for c in _chain(e):
        if isinstance(c, MemoryError) or (isinstance(c, OSError) and c.errno == errno.ENOMEM):
            return {"code": "resource_limit", "message": memory_message(limits.get("memory", 0))}
        if isinstance(c, OSError) and c.errno == errno.EFBIG:
            return {"code": "resource_limit", "message": file_message(limits.get("file_bytes", 0))}
    if isinstance(e, PruneError):
        return {"code": e.code, "message": str(e) or type(e).__name__}
    if type(e).__name__ == "UnsafeZip":  # the zip checks of the library (pruning_core.frontends)
        return {"code": getattr(e, "code", "invalid_model"), "message": str(e) or "unsafe zip"}
    if limits.get("memory") and any(looks_like_memory(str(c)) for c in _chain(e)):
        return {"code": "resource_limit", "message": memory_message(limits["memory"])}
    if isinstance(e, ImportError):
        return {"code": "internal", "message": f"{_UNAVAILABLE.get(op, 'internal error')}: {e}"}
    from pruning_core.errors import describe

    return {"code": "internal", "message": f"{INTERNAL.get(op, 'internal error')}: {describe(e)}"}


def execute(request: dict[str, Any], root: Path, progress: Progress | None = None,
            passthrough: tuple[type[BaseException], ...] = ()) -> dict[str, Any]:
    """Run the request's operation on files under ``root``; the result (errors included)."""
    op = request.get("op", "")
    try:
        if op == "analyze":
            from pruning_core.api import analyze

            return {"ok": True, "info": analyze(str(root / request["model"]))}
        if op == "prune":
            from pruning_core.api import prune

            data, eval_data = request.get("data"), request.get("eval_data")
            res = prune(str(root / request["model"]), request["spec"], str(root / request["out"]),
                        data=str(root / data) if data else None,
                        eval_data=str(root / eval_data) if eval_data else None, progress=progress)
            from worker.report_html import render

            html = Path(res.artifacts["report.json"]).with_name("report.html")
            html.write_text(render(res.report, f"Pruning report: {res.report.get('source', {}).get('name', 'model')}"),
                            encoding="utf-8")
            artifacts = {name: os.path.relpath(Path(path).absolute(), root.absolute())
                         for name, path in {**res.artifacts, "report.html": html}.items()}
            return {"ok": True, "summary": res.summary, "report": res.report, "artifacts": artifacts}
        raise ValueError(f"unknown sandbox operation {op!r}")
    except passthrough:
        raise
    except Exception as e:
        return {"ok": False, "error": classify(e, op, request.get("confine", {}).get("limits"))}


class PipeProgress:
    """The progress callback of the child: JSON lines to the parent, a stage change always, else
    at most a few per second (AutoBot reports a message per step: thousands of events otherwise).
    A warning is never dropped, and a stage's last dropped message goes out before the next line
    (AutoBot's final loss, the step count the job page shows)."""

    MIN_INTERVAL_S = 0.2

    def __init__(self, fd: int) -> None:
        self.fd, self.stage, self.last = fd, None, 0.0
        self.pending: tuple[str, float, str] | None = None  # the last dropped message, unencoded

    def __call__(self, stage: str, fraction: float, message: str | None = None) -> None:
        now = time.monotonic()
        warning = message is not None and message.startswith("warning:")
        if stage == self.stage and now - self.last < self.MIN_INTERVAL_S and not warning:
            if message:
                self.pending = (stage, fraction, message)
            return
        if self.pending is not None:
            self._write(*self.pending)
            self.pending = None
        self.stage, self.last = stage, now
        self._write(stage, fraction, message)

    def _write(self, stage: str, fraction: float, message: str | None) -> None:
        data = (json.dumps({"stage": stage, "fraction": float(fraction), "message": message}) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def write_result(root: Path, result: dict[str, Any]) -> None:
    tmp = root / (RESULT + ".tmp")
    tmp.write_text(json.dumps(result, default=_jsonable))
    os.replace(tmp, root / RESULT)


def _peak() -> dict[str, int]:
    out = {"max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmPeak:"):
                out["vm_peak_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def main(argv: list[str]) -> int:
    from worker import confine

    root = Path.cwd()
    request = json.loads((root / argv[1]).read_text())
    try:
        done = confine.enter(request["confine"])
    except Exception as e:  # never run the model unconfined
        write_result(root, {"ok": False, "error": {"code": "internal",
                                                   "message": f"the sandbox could not be set up: {e}"}})
        return 70
    result = execute(request, root, PipeProgress(int(request["progress_fd"])))
    result["sandbox"] = {**done, **_peak()}
    write_result(root, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
