"""`spa serve`: the embedded deployment in one command.

SQLite database, a local artifact directory, and a Celery worker started beside the API on kombu's
SQLAlchemy transport over a SQLite file (a broker that needs no server), restarted when it dies
(``Supervisor``). Without --auth the server answers loopback clients only, and says so at start.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the worker gets SIGTERM if `spa serve` dies without cleaning up (SIGKILL, crash).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def embedded_env(data_dir: Path, auth: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["SPA_DATA_DIR"] = str(data_dir)
    env["SPA_AUTH_DISABLED"] = "0" if auth else "1"
    # Explicit SPA_DATABASE_URL / SPA_BROKER_URL / SPA_STORAGE from the environment are kept: the
    # same command then serves a PostgreSQL / Redis / S3 setup for a quick production smoke test.
    return env


def embedded_database_url(data_dir: Path) -> str:
    """The database `spa serve --data-dir DIR` runs on (for `spa admin` / `spa db --data-dir`): the
    settings it gets from ``embedded_env``, i.e. ``<DIR>/spa.db`` unless SPA_DATABASE_URL is set."""
    from app.core.config import Settings

    return Settings(data_dir=data_dir.resolve()).database_url


def start_worker(env: dict[str, str], queues: str, log_file: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-Q", queues, "-c", "1", "--pool", "prefork", "-l", "INFO",
        "-n", f"spa-embedded-{os.getpid()}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    log = log_file.open("ab")
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def stop_worker(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)  # warm shutdown: the main process stops its pool children
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        # A job still running: kill it; the sweeper re-runs it when the server starts again.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


class Supervisor(threading.Thread):
    """Keeps the embedded worker alive: when it exits without being asked to (SIGKILL, a crash,
    the OOM killer), its pool children are killed, the restart is logged to stderr and the worker
    log, and a new worker starts (it sweeps at once: the dead one's job is re-queued or failed).
    More than ``burst`` restarts within ``window_s`` seconds: it waits ``window_s`` before the next,
    so a worker that cannot start does not spin."""

    def __init__(self, env: dict[str, str], queues: str, log_file: Path, poll_s: float = 1.0,
                 burst: int = 5, window_s: float = 60.0) -> None:
        super().__init__(daemon=True, name="spa-worker-supervisor")
        self.env, self.queues, self.log_file = env, queues, log_file
        self.poll_s, self.burst, self.window_s = poll_s, burst, window_s
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.restarts: deque[float] = deque()
        self.proc = start_worker(env, queues, log_file)

    def run(self) -> None:
        while not self.stopping.wait(self.poll_s):
            with self.lock:
                code = self.proc.poll()
                if code is None or self.stopping.is_set():
                    continue
                _kill_group(self.proc.pid)  # orphaned pool children would keep the broker's message
            now = time.monotonic()
            while self.restarts and now - self.restarts[0] > self.window_s:
                self.restarts.popleft()
            wait = self.window_s if len(self.restarts) >= self.burst else 0.0
            msg = (f"spa serve: the worker exited (code {code}); restarting it"
                   + (f" in {wait:.0f} s ({len(self.restarts)} restarts in the last {self.window_s:.0f} s)" if wait else ""))
            sys.stderr.write(msg + "\n")
            sys.stderr.flush()
            with self.log_file.open("a") as f:
                f.write(msg + "\n")
            if wait and self.stopping.wait(wait):
                return
            with self.lock:
                if self.stopping.is_set():
                    return
                self.restarts.append(time.monotonic())
                self.proc = start_worker(self.env, self.queues, self.log_file)

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            stop_worker(self.proc)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def access_log_config(path: Path) -> dict[str, Any]:
    """uvicorn's logging: one line per request into ``path`` (the terminal stays quiet), its own
    warnings and errors on stderr."""
    fmt = '%(asctime)s %(client_addr)s "%(request_line)s" %(status_code)s'
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "access": {"()": "uvicorn.logging.AccessFormatter", "fmt": fmt, "use_colors": False},
            "default": {"()": "uvicorn.logging.DefaultFormatter", "fmt": "%(levelprefix)s %(message)s",
                        "use_colors": False},
        },  # fmt: skip
        "handlers": {
            "access": {"class": "logging.FileHandler", "filename": str(path), "formatter": "access"},
            "default": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "default"},
        },
        "loggers": {
            "uvicorn.error": {"handlers": ["default"], "level": "WARNING", "propagate": False},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def serve(*, host: str, port: int, data_dir: Path, auth: bool) -> int:
    # Imported here: `spa admin --data-dir` imports this module with the core extra only.
    from app.api.deps import is_loopback

    if not auth and not is_loopback(host):
        sys.stderr.write(
            f"spa: error: refusing to serve {host} without authentication; bind 127.0.0.1 or pass --auth\n"
        )
        return 2
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = embedded_env(data_dir, auth)
    os.environ.update(env)

    from app.core.config import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    from app.core.db.migrate import upgrade

    upgrade(settings.database_url)
    import uvicorn

    from app.api.main import create_app

    app = create_app(settings)
    worker = Supervisor(env, f"{settings.queue_cpu},{settings.queue_gpu}", data_dir / "worker.log")
    worker.start()
    mode = "API keys required" if auth else "authentication OFF (loopback clients only)"
    sys.stderr.write(
        f"SPA embedded server on http://{host}:{port}  [{mode}]\n"
        f"  data: {data_dir}  (database {settings.database_url}, worker log {data_dir / 'worker.log'}, "
        f"access log {data_dir / 'access.log'})\n"
    )
    sys.stderr.flush()

    # uvicorn re-raises SIGTERM / SIGINT after its graceful shutdown; with the default handler the
    # process would die right there and leave the worker behind. Turn them into SystemExit instead.
    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    code = 0
    try:
        uvicorn.run(app, host=host, port=port, log_config=access_log_config(data_dir / "access.log"))
    except SystemExit as e:  # ours (a signal: 0) or uvicorn's (cannot bind the port: 1)
        code = 0 if e.code in (0, None) else 2
    finally:
        sys.stderr.write("stopping the worker...\n")
        worker.stop()
    if code:
        sys.stderr.write(f"spa: error: could not serve on {host}:{port} (port in use?)\n")
    return code
