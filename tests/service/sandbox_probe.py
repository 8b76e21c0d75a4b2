"""A stand-in for ``worker.sandbox_child`` in the sandbox tests: confined the same way
(``worker.confine.enter``), then it reports what it can see and do, or misbehaves on request."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from worker import confine
from worker.sandbox_child import PipeProgress, write_result

LIMITS = ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE")


def outer_pid() -> int:
    """This process's pid as the tests see it (in its own PID namespace it is 1, 2...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[1])
    return os.getpid()


def tell(fd: int, stage: str, message: str) -> None:
    os.write(fd, json.dumps({"stage": stage, "fraction": 0.0, "message": message}).encode() + b"\n")


def _try(fn: Any) -> str:
    try:
        fn()
    except OSError as e:
        return f"refused: {type(e).__name__}: {e}"
    return "done"


def identity(root: Path, request: dict[str, Any]) -> dict[str, Any]:
    def connect() -> None:
        socket.create_connection(("127.0.0.1", int(request["port"])), timeout=3).close()

    return {
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "env": dict(os.environ), "cwd": os.getcwd(),
        "limits": {n: list(resource.getrlimit(getattr(resource, n))) for n in LIMITS},
        "connect": _try(connect),
        "write_workdir": _try(lambda: (root / "planted").write_text("x")),
        "write_out": _try(lambda: (root / "out" / "ok.txt").write_text("x")),
        "write_marker": _try(lambda: (root / ".owner").write_text("{}")),
        "siblings": sorted(os.listdir(root.parent)),
        "write_base": _try(lambda: (root.parent / "probe").write_text("x")),
    }


def main(argv: list[str]) -> int:
    root = Path.cwd()
    request = json.loads((root / argv[1]).read_text())
    done = confine.enter(request["confine"])
    progress = PipeProgress(int(request["progress_fd"]))
    what = request["probe"]
    info: dict[str, Any] = {"sandbox": done}
    if what == "identity":
        info.update(identity(root, request))
    elif what in ("sleep", "escape"):
        # sleep: a stage that never reports, with a grandchild in its process group;
        # escape: a grandchild in a session of its own, and the job ends normally
        if request.get("ignore_term"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        fd = int(request["progress_fd"])
        if os.fork() == 0:
            if what == "escape":
                os.setsid()
            tell(fd, "grandchild", str(outer_pid()))
            time.sleep(600)
            os._exit(0)
        tell(fd, "child", str(outer_pid()))
        if what == "sleep":
            time.sleep(600)
        time.sleep(0.5)  # the grandchild has reported
    elif what == "spin":
        while True:
            pass
    elif what == "alloc":  # uncaught MemoryError: the crash path of the parent
        hold = [bytearray(64 << 20) for _ in range(1024)]
        info["held"] = len(hold)
    elif what == "bigfile":
        with (root / "out" / "big").open("wb") as fh:
            while True:
                fh.write(b"\0" * (1 << 20))
    elif what == "noise":  # malformed progress lines among good ones
        fd = int(request["progress_fd"])
        os.write(fd, b"garbage\n{\"stage\": 5, \"fraction\": 0}\n{\"stage\": \"x\", \"fraction\": \"nan\"}\n")
        os.write(fd, b"y" * 100_000 + b"\n")
        progress("good", 0.5, "m" * 5000)
    write_result(root, {"ok": True, "info": info})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
