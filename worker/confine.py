"""Confinement the sandboxed child applies to itself before it touches an uploaded model.

Runs at the top of ``worker.sandbox_child`` (stdlib only, nothing of the model read yet), not in a
``preexec_fn``: the worker has threads (heartbeat, sweeper), and Python code between fork and exec
of a threaded process can deadlock on a lock some other thread held. The order matters:

1. die with the parent (PR_SET_PDEATHSIG), and bail out if the parent is already gone;
2. a new network namespace (only a down loopback: no connection anywhere); EPERM (an unprivileged
   worker, a container without CAP_SYS_ADMIN) is recorded and the child carries on;
3. when dropping to another user, a private mount namespace: the folder of the work folders becomes
   a tmpfs with only this job's folder bound back (all jobs run as the same user: none may see
   another's model), and so does every folder the user cannot traverse on the way to what it must
   read (a Python under a root-only home), so the rest of that folder stays hidden;
4. a new PID namespace (``worker.pidns``): whatever the model starts dies with the job;
5. resource limits (address space, CPU time, file size, open files, no core dumps);
6. setgroups([]), setgid, setuid to the sandbox user; no_new_privs; PDEATHSIG again (a uid change
   clears it); then the forks into the PID namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
CPU_HARD_EXTRA_S = 10  # SIGXCPU at the soft limit; SIGKILL this much later if it is ignored


class ConfineError(RuntimeError):
    """The child could not be confined as asked; it must not run the model."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def pdeathsig() -> None:
    _check(_libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def die_with_parent(parent_pid: int) -> None:
    pdeathsig()
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(70)


def _unshare(flag: int, what: str) -> str:
    """'isolated', or why not (the child then runs in the worker's namespace of that kind)."""
    try:
        _check(_libc().unshare(flag), f"unshare({what})")
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EINVAL, errno.ENOSYS, errno.EACCES):
            return f"not isolated: {e.strerror}"
        raise
    return "isolated"


def isolate_network() -> str:
    return _unshare(CLONE_NEWNET, "CLONE_NEWNET")


def remount(plan: list[list[Any]]) -> str:
    """``plan``: [folder, [entry names], tmpfs options], shallowest first. In a private mount
    namespace each folder becomes a tmpfs holding only the named entries (bind mounts of the real
    ones): what the sandbox user could not traverse becomes reachable, and the rest (other jobs'
    work folders, the rest of a root-only home) disappears. 'private', or why no namespace could
    be made; a failure after that (a half-built view) raises."""
    libc = _libc()
    refused = _unshare(CLONE_NEWNS, "CLONE_NEWNS")
    if refused != "isolated":
        return refused
    # Private propagation: nothing mounted here may show up in the worker's namespace.
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount(MS_PRIVATE)")
    for folder, names, options in plan:
        fds = {n: os.open(os.path.join(folder, n), os.O_PATH | os.O_CLOEXEC) for n in names}
        try:
            _check(libc.mount(b"tmpfs", folder.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()),
                   f"mount(tmpfs on {folder})")
            for name, fd in fds.items():
                target = os.path.join(folder, name)
                if os.path.isdir(f"/proc/self/fd/{fd}"):
                    os.mkdir(target)
                else:
                    os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
                _check(libc.mount(f"/proc/self/fd/{fd}".encode(), target.encode(), None, MS_BIND | MS_REC,
                                  None), f"mount(bind {target})")
        finally:
            for fd in fds.values():
                os.close(fd)
    return "private"


def set_limits(memory: int, cpu_s: int, file_bytes: int, open_files: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + CPU_HARD_EXTRA_S))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))


def drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise ConfineError(f"could not switch to uid {uid}")


def enter(cfg: dict[str, Any]) -> dict[str, Any]:
    """Apply ``cfg`` (built by ``worker.sandbox.run``) to this process; what was done."""
    parent = int(cfg["parent_pid"])
    die_with_parent(parent)
    done: dict[str, Any] = {"network": isolate_network()}
    user = cfg.get("user")
    if user is not None and cfg.get("mounts"):
        done["folders"] = remount(cfg["mounts"])  # other jobs' folders stay visible (0711) if refused
        if done["folders"] != "private" and cfg.get("mounts_required"):
            raise ConfineError(
                "the sandbox user cannot reach the Python installation or the work folder, and no "
                f"private mount namespace could be made to reveal them ({done['folders']})"
            )
    done["processes"] = _unshare(CLONE_NEWPID, "CLONE_NEWPID")
    lim = cfg["limits"]
    set_limits(int(lim["memory"]), int(lim["cpu_s"]), int(lim["file_bytes"]), int(lim["open_files"]))
    if user is not None:
        drop_to(int(user["uid"]), int(user["gid"]))
        done["user"] = user["name"]
    else:
        done["user"] = f"uid {os.getuid()} (the worker's)"
    _check(_libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    die_with_parent(parent)
    sys.stdout.flush()
    if done["processes"] == "isolated":
        from worker import pidns

        pidns.enter(pdeathsig)  # from here on: the job, pid 2 of its own namespace
    return done
