"""Fixtures for the service tests.

Every DB-backed test runs twice: on PostgreSQL with a Redis broker (production), and on SQLite with
kombu's SQLAlchemy transport over SQLite (the embedded mode). Each session gets its own database,
its own queue names and a Redis key prefix, so parallel runs on shared servers do not mix.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.core.config import Settings

REDIS_URL = os.environ.get("SPA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("SPA_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parents[2]
RUN = uuid.uuid4().hex[:8]
# The tests build their settings explicitly: a developer's SPA_* environment must not steer them.
for _var in [v for v in os.environ if v.startswith("SPA_") and not v.startswith("SPA_TEST_")]:
    del os.environ[_var]

# Fast recovery timings for the tests; production defaults are in app/core/config.py.
FAST = {
    "heartbeat_interval_s": 0.5,
    "heartbeat_stale_s": 3.0,
    "sweep_interval_s": 1.0,
    "task_soft_time_limit": 120,
    "task_time_limit": 150,
    "visibility_timeout": 600,
}


def settings_env(settings: Settings) -> dict[str, str]:
    """The SPA_* environment that makes a subprocess see the same settings."""
    from app.core.config import as_environment

    return {**as_environment(settings), "PYTHONPATH": str(ROOT)}


@dataclass
class Backend:
    name: str
    base: Settings

    def settings(self, suffix: str = "", **overrides: Any) -> Settings:
        """Same database / broker / storage, own queue names (``suffix``)."""
        values = self.base.model_dump()
        if suffix:
            values["queue_cpu"] = f"{self.base.queue_cpu}-{suffix}"
            values["queue_gpu"] = f"{self.base.queue_gpu}-{suffix}"
        values.update(overrides)
        return Settings(**values)


def _pg_admin_url() -> str:
    return PG_URL


@pytest.fixture(
    scope="session",
    params=[pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis]), "sqlite"],
)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    from app.core.db.migrate import upgrade
    from app.core.db.session import get_engine

    data_dir = tmp_path_factory.mktemp(f"spa-{request.param}")
    common = {"data_dir": data_dir, "queue_cpu": f"spa-t{RUN}-cpu", "queue_gpu": f"spa-t{RUN}-gpu", **FAST}
    if request.param == "postgres":
        db_name = f"spa_test_{RUN}"
        admin = sa.create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
        url = sa.make_url(PG_URL).set(database=db_name).render_as_string(hide_password=False)
        settings = Settings(
            database_url=url, broker_url=REDIS_URL, broker_key_prefix=f"spa-t{RUN}:", **common
        )
    else:
        settings = Settings(**common)  # embedded defaults under data_dir
    upgrade(settings.database_url)
    yield Backend(request.param, settings)
    get_engine(settings.database_url).dispose()
    get_engine.cache_clear()
    if request.param == "postgres":
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(match=f"spa-t{RUN}:*"))
        if keys:
            r.delete(*keys)


@contextmanager
def fresh_database(kind: str, directory: Path) -> Iterator[str]:
    """A new, empty database of the given kind; dropped afterwards. Yields its URL."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / f'fresh-{uuid.uuid4().hex[:6]}.db'}"
        return
    name = f"spa_fresh_{RUN}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        from app.core.db.session import get_engine

        get_engine.cache_clear()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def private_settings(backend: Backend, tmp_path: Path) -> Iterator[Settings]:
    """Settings on a database of its own: no live worker's sweeper touches its jobs."""
    from app.core.db.migrate import upgrade

    with fresh_database(backend.name, tmp_path) as url:
        upgrade(url)
        yield backend.settings("idle", database_url=url)


@pytest.fixture
def settings(backend: Backend) -> Settings:
    """Settings whose queues no worker consumes: jobs stay queued (API-only tests). PyTorch uploads
    on, so that .pt2 cases reach the checks they test (their default is tested on its own)."""
    return backend.settings("idle", allow_pytorch_uploads=True)


def make_client(settings: Settings, client_addr: tuple[str, int] = ("testclient", 50000)) -> Any:
    from fastapi.testclient import TestClient

    from app.api.main import create_app

    return TestClient(create_app(settings), client=client_addr)


@pytest.fixture
def api(settings: Settings) -> Iterator[Any]:
    with make_client(settings) as client:
        yield client


@pytest.fixture
def new_key(backend: Backend) -> Callable[[str], dict[str, str]]:
    """Create an API key (a tenant); returns the auth header."""
    from app.core.apikeys import create_key
    from app.core.db.session import session_scope

    def make(name: str = "tester") -> dict[str, str]:
        with session_scope(backend.base.database_url) as session:
            _, plain = create_key(session, name)
        return {"Authorization": f"Bearer {plain}"}

    return make


@pytest.fixture
def auth(new_key: Callable[[str], dict[str, str]]) -> dict[str, str]:
    return new_key("alice")


# -- models and data -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.service.modelzoo import tiny_cnn

    d = tmp_path_factory.mktemp("zoo")
    small = tiny_cnn(d / "tiny.onnx")
    # Pruning this one spends seconds measuring latency: long enough to cancel or kill mid-job.
    slow = tiny_cnn(d / "slow.onnx", width=128, depth=6, size=128, seed=1)
    truncated = d / "truncated.onnx"
    truncated.write_bytes(small.read_bytes()[: small.stat().st_size // 2])
    return {"tiny": small, "slow": slow, "truncated": truncated}


# -- live workers ----------------------------------------------------------------------------


class WorkerProc:
    """A real Celery worker subprocess (prefork, one child) in its own process group."""

    def __init__(self, settings: Settings, log: Path, name: str) -> None:
        self.log = log
        cmd = [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "-Q", f"{settings.queue_cpu},{settings.queue_gpu}", "-c", "1", "--pool", "prefork",
            "-l", "INFO", "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=settings_env(settings), stdout=log.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the whole group: the main process and its pool child, no cleanup at all."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass


@pytest.fixture(scope="session")
def live_worker(
    backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, WorkerProc]]:
    settings = backend.settings("live", allow_pytorch_uploads=True)  # .pt2 tests: see SECURITY.md
    w = WorkerProc(settings, tmp_path_factory.mktemp("logs") / f"worker-{backend.name}.log", f"live-{RUN}")
    yield settings, w
    w.stop()


@pytest.fixture
def live(live_worker: tuple[Settings, WorkerProc]) -> Iterator[Any]:
    """A TestClient whose jobs go to the session's live worker."""
    settings, _ = live_worker
    with make_client(settings) as client:
        yield client


def wait_for(
    fn: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def upload(
    client: Any, headers: dict[str, str], path: Path, name: str | None = None, url: str = "/v1/models"
) -> Any:
    with path.open("rb") as fh:
        return client.post(
            url, headers=headers, files={"file": (name or path.name, fh, "application/octet-stream")}
        )


def wait_model(client: Any, headers: dict[str, str], model_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(
        lambda: (
            (m := client.get(f"/v1/models/{model_id}", headers=headers).json())["state"] != "validating" and m
        ),
        timeout,
        what=f"model {model_id} validation",
    )


def wait_job(
    client: Any,
    headers: dict[str, str],
    job_id: str,
    timeout: float = 120,
    states: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
) -> dict[str, Any]:
    return wait_for(
        lambda: (j := client.get(f"/v1/jobs/{job_id}", headers=headers).json())["state"] in states and j,
        timeout,
        what=f"job {job_id} to reach {states}",
    )


# -- a live HTTP server (for the CLI) -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def live_server(live_worker: tuple[Settings, WorkerProc]) -> Iterator[str]:
    import uvicorn

    from app.api.main import create_app

    settings, _ = live_worker
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, what="uvicorn start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def problem(response: Any, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 answer with the given status; returns the body."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status and body["title"]
    return body
