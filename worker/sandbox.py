"""Run a model operation (validation's ``analyze``, a job's ``prune``) in a sandboxed child process.

Why: uploaded models are programs (a .pt2 is a pickle archive) and pruning can run for hours, so
neither may run in the worker process itself. The worker keeps the database work (progress
events, heartbeats, cancel); the child (``worker.sandbox_child``) gets the files, a minimal
environment (no database URL, no broker, no secrets), no network, resource limits and, when the
worker is root, an unprivileged user (``worker.confine``).

Why ``subprocess`` and not ``multiprocessing``: Celery's prefork pool children are daemonic and
may not have multiprocessing children. The child has its own session, so that a cancel, a time
limit or any error of the worker kills its whole process group (SIGTERM, SIGKILL after the grace);
it also dies with the worker (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import json
import math
import os
import pwd
import re
import select
import signal
import site
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from worker.sandbox_child import (
    INTERNAL,
    RESULT,
    cpu_message,
    file_message,
    looks_like_memory,
    memory_message,
)

CHILD = "worker.sandbox_child"
CODE_OK = re.compile(r"^[a-z_]{1,40}$")
MAX_RESULT_BYTES = 256 * 1024**2
MAX_LINE = 64 * 1024
POLL_INTERVAL_S = 0.5
# Variables the child keeps from the worker: where programs are, locale, and how many threads the
# numeric libraries may use. Nothing else: the worker's environment holds URLs with passwords.
KEEP_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH",
            "MALLOC_ARENA_MAX")
KEEP_ENV_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "NUMEXPR_", "VECLIB_", "KMP_", "GOMP_")


class SandboxFailure(Exception):
    """The operation failed: ``code`` (a job's error_code) and a one-sentence ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Policy:
    memory: int
    cpu_s: int
    file_bytes: int
    open_files: int = 256
    user: str | None = "nobody"  # used only when the worker is root
    grace_s: float = 5.0
    library_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: Any) -> Policy:
        return cls(memory=settings.job_memory_bytes, cpu_s=settings.job_cpu_seconds,
                   file_bytes=settings.job_file_bytes, user=settings.sandbox_user or None,
                   grace_s=settings.cancel_grace_s,
                   # the library reads its unpack bounds from these (pruning_core.ir.limits)
                   library_env={"SPA_MAX_UNPACKED_BYTES": str(settings.max_unpacked_bytes),
                                "SPA_MAX_ZIP_RATIO": str(settings.max_zip_ratio)})

    def limits(self) -> dict[str, int]:
        return {"memory": self.memory, "cpu_s": self.cpu_s, "file_bytes": self.file_bytes,
                "open_files": self.open_files}


def sandbox_user(policy: Policy) -> pwd.struct_passwd | None:
    """The account the child runs as: only a root worker switches user."""
    if os.geteuid() != 0 or not policy.user or policy.user == "root":
        return None
    try:
        return pwd.getpwnam(policy.user)
    except KeyError:
        raise SandboxFailure("internal", f"the sandbox user {policy.user!r} does not exist on this worker") from None


def hand_over(workdir: Path, user: pwd.struct_passwd | None) -> None:
    """Give the child its folders: in/ (read), out/ and run/ (write); the folder itself stays the
    worker's (its marker and request are out of the child's reach)."""
    if user is None:
        return
    os.chmod(workdir, 0o711)
    for sub in ("in", "out", "run"):
        top = workdir / sub
        os.lchown(top, user.pw_uid, user.pw_gid)
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), user.pw_uid, user.pw_gid)


def _can_search(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def mount_plan(paths: Iterable[str], uid: int, gid: int, private: str) -> tuple[list[list[Any]], bool]:
    """Folders to cover in the child's mount namespace (``worker.confine.remount``), shallowest
    first, each as [folder, entries bound back, tmpfs mode]: every folder on the way to ``paths``
    that uid/gid cannot traverse, and ``private`` (the folder holding every job's work folder,
    so that a job sees its own folder only). Also whether the child cannot run without them (some
    path is out of its reach)."""
    found: dict[str, set[str]] = {}
    required = False
    for p in paths:
        parts = Path(os.path.realpath(p)).parts
        for i in range(2, len(parts)):  # never "/" itself
            folder = os.path.join(*parts[:i])
            try:
                closed = not _can_search(os.stat(folder), uid, gid)
            except OSError:
                break
            if closed or folder == private:
                found.setdefault(folder, set()).add(parts[i])
                required = required or closed
    plan = []
    for folder in sorted(found, key=lambda f: (f.count(os.sep), f)):
        shared = os.stat(folder).st_mode & stat.S_IWOTH  # /tmp: an empty private one, writable
        plan.append([folder, sorted(found[folder]), "mode=1777,size=16m" if shared else "mode=0755,size=64k"])
    return plan, required


def _code_paths() -> list[str]:
    here = Path(__file__).resolve().parents[1]  # the folder holding the worker package
    paths = {str(here), sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             *site.getsitepackages()}
    paths |= {p for p in sys.path if p and os.path.exists(p)}
    return sorted(paths)


def child_env(workdir: Path, policy: Policy) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in KEEP_ENV or k.startswith(KEEP_ENV_PREFIXES)}
    here = str(Path(__file__).resolve().parents[1])
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
    env.update({
        "PYTHONPATH": os.pathsep.join([here, *extra]),
        "HOME": str(workdir / "run"),
        "TMPDIR": str(workdir / "run" / "tmp"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # RLIMIT_AS counts address space reserved, not used: glibc reserves 64 MiB per malloc
        # arena, up to 8 per core; a few arenas keep a many-core machine inside the limit.
        "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "4"),
        **policy.library_env,
    })
    return env


def run(workdir: Path, request: dict[str, Any], policy: Policy, *,
        progress: Callable[[str, float, str | None], None] | None = None,
        poll: Callable[[], None] | None = None, poll_interval: float = POLL_INTERVAL_S,
        module: str = CHILD) -> dict[str, Any]:
    """Run ``request`` in a sandboxed child and return its result. ``progress`` gets the child's
    progress; ``poll`` is called every ``poll_interval`` s. Whatever either raises (Cancelled, a
    time limit) stops the child -- SIGTERM to its group, SIGKILL after ``policy.grace_s`` -- and
    propagates. A failure of the operation raises SandboxFailure."""
    user = sandbox_user(policy)
    hand_over(workdir, user)
    read_fd, write_fd = os.pipe()
    confine: dict[str, Any] = {"parent_pid": os.getpid(), "limits": policy.limits(), "user": None}
    if user is not None:
        confine["user"] = {"name": user.pw_name, "uid": user.pw_uid, "gid": user.pw_gid}
        private = os.path.dirname(os.path.realpath(workdir))
        confine["mounts"], confine["mounts_required"] = mount_plan(
            [*_code_paths(), str(workdir)], user.pw_uid, user.pw_gid, private)
    (workdir / "request.json").write_text(json.dumps({**request, "progress_fd": write_fd, "confine": confine}))
    (workdir / RESULT).unlink(missing_ok=True)  # only this run's answer counts
    try:
        with (workdir / "child.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-P", "-s", "-m", module, "request.json"], cwd=workdir,
                env=child_env(workdir, policy), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, pass_fds=(write_fd,), start_new_session=True,
            )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    try:
        _watch(proc.pid, read_fd, progress, poll, poll_interval)
    finally:
        os.close(read_fd)
        status, usage = stop(proc, policy.grace_s)
    return outcome(workdir, request.get("op", ""), status, usage, policy)


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it: while it is an unreaped zombie its pid,
    and so its process group id, cannot be reused, and killpg stays safe."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _watch(pid: int, fd: int, progress: Callable[[str, float, str | None], None] | None,
           poll: Callable[[], None] | None, interval: float) -> None:
    buf, eof = b"", False
    next_poll = time.monotonic() + interval
    while True:
        if eof:
            time.sleep(0.05)
        elif select.select([fd], [], [], min(0.1, interval))[0]:
            chunk = os.read(fd, 1 << 16)
            eof = not chunk
            buf = _lines(buf + chunk, progress)
        if poll is not None and time.monotonic() >= next_poll:
            poll()
            next_poll = time.monotonic() + interval
        if _exited(pid):
            if not eof:  # what the child wrote last (a grandchild may hold the pipe: no blocking)
                os.set_blocking(fd, False)
                try:
                    while chunk := os.read(fd, 1 << 16):
                        buf = _lines(buf + chunk, progress)
                except BlockingIOError:
                    pass
            return


def _lines(buf: bytes, progress: Callable[[str, float, str | None], None] | None) -> bytes:
    *lines, rest = buf.split(b"\n")
    for line in lines:
        msg = _progress_line(line)
        if msg is not None and progress is not None:
            progress(*msg)
    return rest if len(rest) <= MAX_LINE else b""


def _progress_line(line: bytes) -> tuple[str, float, str | None] | None:
    """A progress line from the (untrusted) child, bounded and typed; None when malformed."""
    try:
        d = json.loads(line)
        stage, fraction, message = d["stage"], float(d["fraction"]), d.get("message")
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(stage, str) or not stage or len(stage) > 64 or not math.isfinite(fraction):
        return None
    if message is not None and not isinstance(message, str):
        return None
    return stage, fraction, message[:1000] if message else None


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(proc: subprocess.Popen[bytes], grace: float) -> tuple[int | None, Any]:
    """End the child and everything in its process group; reap it. (exit status, rusage)."""
    pid = proc.pid
    if not _exited(pid):
        _killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while not _exited(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    _killpg(pid, signal.SIGKILL)  # also what an exited child left running in its group
    deadline = time.monotonic() + 30
    while True:
        try:
            got, status, usage = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            return proc.returncode, None
        if got:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage
        if time.monotonic() > deadline:  # stuck in the kernel (D state): give up waiting
            return None, None
        time.sleep(0.02)


def _tail(path: Path, size: int = 4096) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - size))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def read_result(workdir: Path) -> Any:
    """The child's result file (no symlinks, bounded), or None when it wrote none."""
    try:
        with open_output(workdir / RESULT, None, MAX_RESULT_BYTES) as fh:
            return json.loads(fh.read(MAX_RESULT_BYTES + 1))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise SandboxFailure("internal", f"internal error: the sandboxed process left an unreadable result ({e})") from None


def outcome(workdir: Path, op: str, status: int | None, usage: Any, policy: Policy) -> dict[str, Any]:
    """The child's result; a SandboxFailure from its error, or from how it died."""
    result = read_result(workdir)
    if result is not None:
        return check(result, op)
    cpu = (usage.ru_utime + usage.ru_stime) if usage is not None else 0.0
    if status == -signal.SIGXCPU or (status == -signal.SIGKILL and cpu >= policy.cpu_s - 1):
        raise SandboxFailure("resource_limit", cpu_message(policy.cpu_s))
    if status == -signal.SIGXFSZ:
        raise SandboxFailure("resource_limit", file_message(policy.file_bytes))
    tail = _tail(workdir / "child.log")
    if looks_like_memory(tail):
        raise SandboxFailure("resource_limit", memory_message(policy.memory))
    if "file too large" in tail.lower():
        raise SandboxFailure("resource_limit", file_message(policy.file_bytes))
    how = (f"was killed by {signal.Signals(-status).name}" if status is not None and status < 0
           else f"exited with status {status}")
    last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
    raise SandboxFailure("internal", f"{INTERNAL.get(op, 'internal error')}: the sandboxed process {how}"
                                     + (f" ({last[:300]})" if last else ""))


def check(result: Any, op: str) -> dict[str, Any]:
    """Accept a well-formed success, or raise the reported error."""
    if not isinstance(result, dict):
        raise SandboxFailure("internal", "internal error: the sandboxed process returned a malformed result")
    if result.get("ok") is True:
        fields = {"analyze": ("info",), "prune": ("summary", "report", "artifacts")}.get(op, ())
        if all(isinstance(result.get(f), dict) for f in fields):
            return result
        raise SandboxFailure("internal", "internal error: the sandboxed process returned a malformed result")
    err = result.get("error") if isinstance(result.get("error"), dict) else {}
    code = err.get("code") if isinstance(err.get("code"), str) and CODE_OK.match(err["code"]) else "internal"
    message = err.get("message") if isinstance(err.get("message"), str) and err["message"] else code
    raise SandboxFailure(code, message[:2000])


def output_path(workdir: Path, rel: Any) -> Path:
    """An artifact path the child reported: relative, inside out/, nothing else."""
    p = PurePosixPath(rel) if isinstance(rel, str) else None
    if p is None or p.is_absolute() or ".." in p.parts or p.parts[:1] != ("out",) or len(p.parts) < 2:
        raise SandboxFailure("internal", f"internal error: the job reported an artifact outside its output folder: {rel!r}")
    path = workdir / p
    if not os.path.realpath(path.parent).startswith(os.path.realpath(workdir / "out")):
        raise SandboxFailure("internal", f"internal error: the artifact {rel!r} is behind a link")
    return path


def open_output(path: Path, owner_uid: int | None, max_bytes: int | None = None) -> IO[bytes]:
    """Open a file the child wrote, for reading: no symlink, no FIFO or device, no hard link to
    someone else's file (the child may have planted any of them to make the worker read it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    bad = (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1
           or (owner_uid is not None and st.st_uid != owner_uid)
           or (max_bytes is not None and st.st_size > max_bytes))
    if bad:
        os.close(fd)
        raise OSError(f"{path.name} is not a plain file of the job's (or it is too large)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
