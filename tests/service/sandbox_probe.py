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
    elif what == "sleep":  # a stage that never reports, with a grandchild in its process group
        if request.get("ignore_term"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        kid = os.fork()
        if kid == 0:
            time.sleep(600)
            os._exit(0)
        progress("probe", 0.0, json.dumps({"pid": os.getpid(), "grandchild": kid}))
        time.sleep(600)
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
