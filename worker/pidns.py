"""The sandboxed child's own PID namespace: nothing it starts outlives it.

Why: the worker kills the child's process group, and the child dies with the worker
(PR_SET_PDEATHSIG), but a process the model starts in a new session (setsid) is in neither. Left
running as the sandbox user it could wait for later jobs and read their inputs. When the init of
a PID namespace exits, the kernel kills every process in it, sessions or not.

After ``unshare(CLONE_NEWPID)`` (``worker.confine``), ``enter`` forks twice:

    outer (the worker's child, in the worker's namespace) -- waits, then leaves with the job's status
      init (pid 1 of the new namespace)                     -- reaps, exits when the job does
        job (pid 2)                                          -- the only process that returns

The job's end (exit code, or the signal that killed it: SIGXCPU, SIGKILL) is passed up unchanged,
so the worker reads it from the outer process as if there were no namespace. A SIGTERM to the
group ends the job (the init ignores it, as any namespace init does); the outer's death, by any
signal, takes the init and so the whole namespace with it.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable


def _encode(status: int) -> int:
    """A wait status as an exit code: 128 + signal for a killed process (as shells do)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 70


def _mirror(status: int) -> None:
    """End this process the way the init reported the job ended. Never returns."""
    code = os.waitstatus_to_exitcode(status)
    sig = -code if code < 0 else code - 128 if 128 < code < 128 + signal.NSIG else 0
    if sig:
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        time.sleep(1)  # a signal whose default is to continue (SIGCHLD...): fall through
        os._exit(128 + sig)
    os._exit(code)


def enter(die_with_parent: Callable[[], None]) -> None:
    """Fork the namespace's init and the job; returns in the job only."""
    alive_r, alive_w = os.pipe()  # the init reads EOF here if the outer died before its PDEATHSIG
    init = os.fork()
    if init:
        os.close(alive_r)
        _mirror(os.waitpid(init, 0)[1])
    os.close(alive_w)
    die_with_parent()
    if select.select([alive_r], [], [], 0)[0]:
        os._exit(70)
    os.close(alive_r)
    job = os.fork()
    if job == 0:
        die_with_parent()  # belt and braces: the init's exit kills the namespace anyway
        return
    while True:  # the init: reap whatever ends, until the job does
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(70)
        if pid == job:
            os._exit(_encode(status))
