"""Fault scenarios on a production-like deployment of real processes: the API (uvicorn) and a Celery
worker as separate processes, on a PostgreSQL cluster and a Redis server of the test's own, which
it stops, kills and restarts mid-job. Each scenario asserts that

- every job ends succeeded (or failed with a reason) within a bound: nothing stuck, nothing lost;
- the API answered every request during the outage, never with a 5xx other than 503, and every
  error as problem+json (no reset connection, no 500);
- no job has duplicate artifacts, no blob is left that nothing references, no staging file is left.

(SIGKILL of the worker on the shared servers, and the attempts limit, are in test_worker.py; a
broker outage at submit in test_api.py.)"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from app.core.config import Settings
from tests.service.conftest import FAST, WorkerProc, wait_for
from tests.service.servers import ApiProc, PrivatePostgres, PrivateRedis

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(420)]
SPEC = {"target": {"flops": 0.5}, "criterion": "l1"}
FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def record() -> Iterator[list[dict[str, Any]]]:
    """Each scenario's outcome; written as JSON to $SPA_TEST_FAULT_REPORT when set (bench/faults.py
    turns it into the table of docs/reliability.md)."""
    rows: list[dict[str, Any]] = []
    yield rows
    if out := os.environ.get("SPA_TEST_FAULT_REPORT"):
        Path(out).write_text(json.dumps(rows, indent=1))


def outcome(scenario: str, mode: str, t0: float, jobs: list[dict[str, Any]], probe: Prober | None = None,
            **extra: Any) -> dict[str, Any]:  # fmt: skip
    statuses: dict[str, int] = {}
    for _, code, _ in probe.answers if probe else ():
        statuses[str(code)] = statuses.get(str(code), 0) + 1
    return {
        "scenario": scenario, "mode": mode, "recovered_s": round(time.monotonic() - t0, 1),
        "requests": len(probe.answers) if probe else 0, "statuses": statuses,
        "no_answer": len(probe.no_answer) if probe else 0,
        "jobs": len(jobs), "succeeded": sum(j["state"] == "succeeded" for j in jobs),
        "failed": sum(j["state"] == "failed" for j in jobs), **extra,
    }  # fmt: skip


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    yield server
    server.close()


@dataclass
class Stack:
    settings: Settings
    api: ApiProc
    worker: WorkerProc
    redis: PrivateRedis | None
    headers: dict[str, str]
    tmp: Path
    workers: list[WorkerProc] = field(default_factory=list)

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.api.url, headers=self.headers, timeout=timeout)

    def upload(self, path: Path) -> dict[str, Any]:
        with self.client() as c, path.open("rb") as fh:
            r = c.post("/v1/models", files={"file": (path.name, fh, "application/octet-stream")})
        assert r.status_code in (200, 201), r.text
        return r.json()

    def ready_model(self, path: Path) -> str:
        model_id = self.upload(path)["id"]
        with self.client() as c:
            wait_for(lambda: c.get(f"/v1/models/{model_id}").json()["state"] == "ready", 90, what="validation")
        return model_id

    def submit(self, model_id: str) -> str:
        with self.client() as c:
            r = c.post("/v1/jobs", json={"model_id": model_id, "spec": SPEC})
        assert r.status_code in (200, 201, 202), r.text
        return r.json()["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        with self.client() as c:
            return c.get(f"/v1/jobs/{job_id}").json()

    def messages(self, job_id: str) -> list[str]:
        with self.client() as c:
            return [e["message"] or "" for e in c.get(f"/v1/jobs/{job_id}/events").json()["items"]]

    def wait_final(self, job_ids: list[str], timeout: float) -> list[dict[str, Any]]:
        with self.client() as c:
            def done() -> list[dict[str, Any]] | None:
                jobs = [c.get(f"/v1/jobs/{j}").json() for j in job_ids]
                return jobs if all(j.get("state") in FINAL for j in jobs) else None

            return wait_for(done, timeout, 0.5, what=f"jobs {job_ids} to end")


@contextmanager
def stack(pg: PrivatePostgres | None, tmp: Path, *, persistent_redis: bool = True) -> Iterator[Stack]:
    """API and worker processes on ``pg`` and a Redis of their own (production), or on the
    embedded SQLite database and broker files when ``pg`` is None."""
    from app.core.apikeys import create_key
    from app.core.db.migrate import upgrade
    from app.core.db.session import get_engine, session_scope

    values: dict[str, Any] = {**FAST, "heartbeat_stale_s": 6.0, "queued_stale_s": 4.0, "staging_stale_s": 3.0,
                              "db_retry_s": 120.0, "queue_cpu": "fcpu", "queue_gpu": "fgpu"}  # fmt: skip
    redis = None
    if pg is not None:
        name = f"spa_fault_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(pg.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        redis = PrivateRedis(persistent_redis)
        values.update(database_url=pg.url.rsplit("/", 1)[0] + f"/{name}", broker_url=redis.url)
    settings = Settings(data_dir=tmp / "data", **values)
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        _, key = create_key(session, "fault")
    api = worker = None
    try:
        api = ApiProc(settings, tmp / "api.log")
        worker = WorkerProc(settings, tmp / "worker.log", f"fault-{uuid.uuid4().hex[:6]}")
        s = Stack(settings, api, worker, redis, {"Authorization": f"Bearer {key}"}, tmp)
        yield s
        for w in s.workers:
            w.stop()
    finally:
        if worker is not None:
            worker.stop()
        if api is not None:
            api.stop()
        if redis is not None:
            redis.close()
        get_engine(settings.database_url).dispose()
        get_engine.cache_clear()


class Prober(threading.Thread):
    """Keeps asking the API what a client would (poll, list, submit, readiness) and records every
    answer: status and media type, or the transport error when there was no answer at all."""

    def __init__(self, s: Stack, job_id: str, model_id: str) -> None:
        super().__init__(daemon=True)
        self.s, self.job_id, self.model_id = s, job_id, model_id
        self.answers: list[tuple[str, int, str]] = []
        self.no_answer: list[str] = []
        self.submitted: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        with self.s.client(timeout=20) as c:
            while not self.stop_event.is_set():
                for what, call in (
                    ("poll", lambda: c.get(f"/v1/jobs/{self.job_id}")),
                    ("list", lambda: c.get("/v1/jobs")),
                    ("events", lambda: c.get(f"/v1/jobs/{self.job_id}/events")),
                    ("submit", lambda: c.post("/v1/jobs", json={"model_id": self.model_id, "spec": SPEC})),
                    ("readyz", lambda: c.get("/readyz")),
                ):
                    if what == "submit" and self.submitted:  # one accepted job is proof enough
                        continue
                    try:
                        r = call()
                    except httpx.TransportError as e:
                        self.no_answer.append(f"{what}: {type(e).__name__}")
                        continue
                    self.answers.append((what, r.status_code, r.headers.get("content-type", "")))
                    if what == "submit" and r.status_code in (200, 201, 202):
                        self.submitted.append(r.json()["id"])
                time.sleep(0.2)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(30)
        assert not self.no_answer, f"requests with no answer: {self.no_answer[:5]}"
        bad = [a for a in self.answers if a[1] >= 500 and a[1] != 503]
        assert not bad, f"5xx other than 503: {bad[:5]}"
        errors = [a for a in self.answers if a[1] >= 400 and not a[2].startswith("application/problem+json")]
        assert not errors, f"errors that are not problem+json: {errors[:5]}"


def assert_clean(s: Stack, jobs: list[dict[str, Any]]) -> None:
    """Every job ended with a reason when it failed; each artifact stored once; no blob that nothing
    references; no staging file left behind."""
    from app.core.db.models import Dataset, Job, Model
    from app.core.db.session import session_scope
    from app.core.storage import blob_key, make_store

    for job in jobs:
        assert job["state"] in FINAL, job
        if job["state"] == "failed":
            assert job["error"] and job["error_code"], job
    referenced: set[str] = set()
    with session_scope(s.settings.database_url) as session:
        for job in session.execute(sa.select(Job)).scalars():
            assert job.state in FINAL, (job.id, job.state)
            names = list((job.artifacts or {}).keys())
            assert len(names) == len(set(names))
            referenced |= {a["sha256"] for a in (job.artifacts or {}).values()}
        referenced |= set(session.execute(sa.select(Model.sha256).where(Model.state != "invalid")).scalars())
        referenced |= set(session.execute(sa.select(Dataset.sha256)).scalars())
    store = make_store(s.settings)
    root = Path(s.settings.storage_dir or "")
    stored = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".staging" not in p.parts}
    assert stored == {blob_key(sha) for sha in referenced}, "orphan or missing blobs"
    wait_for(lambda: not list(store.staging_dir.glob("*.part")), 30, what="staging files to be swept")


def _running(s: Stack, job_id: str) -> None:
    wait_for(lambda: s.job(job_id)["state"] == "running", 90, 0.2, what=f"job {job_id} running")


def test_postgres_restart_mid_job(
    pg: PrivatePostgres, tmp_path: Path, zoo: dict[str, Path], record: list[dict[str, Any]]
) -> None:
    """PostgreSQL stops for ~8 s while a job runs and two wait: the API answers 503 meanwhile, the
    worker retries instead of dropping messages, and every job ends succeeded."""
    with stack(pg, tmp_path) as s:
        slow, tiny = s.ready_model(zoo["slow"]), s.ready_model(zoo["tiny"])
        jobs = [s.submit(slow), s.submit(tiny), s.submit(tiny)]
        _running(s, jobs[0])
        probe = Prober(s, jobs[0], tiny)
        t0 = time.monotonic()
        pg.stop("fast")
        probe.start()
        try:
            time.sleep(8)
        finally:
            pg.start()
        time.sleep(2)
        probe.finish()
        assert any(code == 503 for _, code, _ in probe.answers), "no request saw the outage"
        final = s.wait_final(jobs + probe.submitted, 300)
        record.append(outcome("PostgreSQL stopped 8 s mid-job, 2 jobs waiting", "production", t0, final, probe))
        assert all(j["state"] == "succeeded" for j in final), [(j["id"], j["state"], j.get("error")) for j in final]
        assert_clean(s, final)


@pytest.mark.parametrize("persistent", [True, False], ids=["aof", "no-persistence"])
def test_redis_restart_mid_job(
    pg: PrivatePostgres, tmp_path: Path, zoo: dict[str, Path], persistent: bool, record: list[dict[str, Any]]
) -> None:
    """Redis is killed while a job runs and two wait in its queue, then restarted (with its
    append-only file, or empty): submits answer 503 meanwhile; queued messages that the restart lost
    are re-sent by the sweeper, so every job ends succeeded."""
    with stack(pg, tmp_path, persistent_redis=persistent) as s:
        assert s.redis is not None
        slow, tiny = s.ready_model(zoo["slow"]), s.ready_model(zoo["tiny"])
        jobs = [s.submit(slow), s.submit(tiny), s.submit(tiny)]
        _running(s, jobs[0])
        probe = Prober(s, jobs[0], tiny)
        t0 = time.monotonic()
        s.redis.kill()
        probe.start()
        try:
            time.sleep(4)
        finally:
            s.redis.start()
        time.sleep(2)
        probe.finish()
        assert any(what == "submit" and code == 503 for what, code, _ in probe.answers)
        final = s.wait_final(jobs + probe.submitted, 300)
        resent = [j for j in jobs[1:] if any("re-sent" in m for m in s.messages(j))]
        what = "with its append-only file" if persistent else "empty (no persistence)"
        record.append(outcome(f"Redis killed mid-job, 2 jobs waiting, restarted {what}", "production", t0, final,
                              probe, resent=len(resent)))  # fmt: skip
        assert all(j["state"] == "succeeded" for j in final), [(j["id"], j["state"], j.get("error")) for j in final]
        assert_clean(s, final)
        # Without persistence the waiting messages died with Redis and only the sweep brought them
        # back; with its append-only file nothing was lost and nothing is sent twice.
        assert len(resent) == (0 if persistent else 2), resent


@pytest.fixture(params=["production", "embedded"])
def mode_pg(request: pytest.FixtureRequest) -> PrivatePostgres | None:
    """The production deployment (PostgreSQL + Redis), or the embedded one (SQLite files)."""
    return request.getfixturevalue("pg") if request.param == "production" else None


def test_worker_killed_mid_job_then_restarted(
    mode_pg: PrivatePostgres | None, tmp_path: Path, zoo: dict[str, Path], record: list[dict[str, Any]]
) -> None:
    """The worker's whole process group is SIGKILLed mid-job and a new one started: the job is run
    again and succeeds, once, with nothing left behind."""
    with stack(mode_pg, tmp_path) as s:
        model = s.ready_model(zoo["slow"])
        job = s.submit(model)
        _running(s, job)
        t0 = time.monotonic()
        s.worker.kill()
        s.workers.append(WorkerProc(s.settings, tmp_path / "worker2.log", f"fault2-{uuid.uuid4().hex[:6]}"))
        (final,) = s.wait_final([job], 180)
        record.append(outcome("worker SIGKILLed mid-job (whole process group), a new one started",
                              "production" if mode_pg else "embedded", t0, [final], attempts=final["attempts"]))
        assert final["state"] == "succeeded" and final["attempts"] == 2, (final["error"], final["attempts"], s.messages(job))
        assert_clean(s, [final])


def test_api_killed_mid_upload(
    mode_pg: PrivatePostgres | None, tmp_path: Path, zoo: dict[str, Path], record: list[dict[str, Any]]
) -> None:
    """The API process is SIGKILLed while a client streams an upload, then restarted: no model row
    is left half-made, the partial staging file is swept, and the next upload succeeds."""
    with stack(mode_pg, tmp_path) as s:
        size = 24 * 1024 * 1024
        boundary = "spa-fault-boundary"
        head = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.onnx\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        with socket.create_connection(("127.0.0.1", s.api.port), timeout=10) as sock:
            sock.sendall(
                (
                    f"POST /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: {s.headers['Authorization']}\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                    f"Content-Length: {len(head) + size + len(tail)}\r\n\r\n"
                ).encode()
                + head
            )
            sent = 0
            chunk = b"\x08\x07" + os.urandom(1024 * 1024 - 2)
            while sent < size // 2:
                sock.sendall(chunk)
                sent += len(chunk)
            staging = Path(s.settings.storage_dir or "") / ".staging"
            wait_for(lambda: any(staging.glob("*.part")), 10, what="the upload to be staged")
            t0 = time.monotonic()
            s.api.kill()
        s.api.start()
        from app.core.db.models import Model
        from app.core.db.session import session_scope

        with session_scope(s.settings.database_url) as session:
            assert session.execute(sa.select(sa.func.count()).select_from(Model)).scalar_one() == 0
        model = s.ready_model(zoo["tiny"])
        assert model
        assert_clean(s, [])
        record.append(outcome("API SIGKILLed mid-upload (12 of 24 MB sent), restarted", "production" if mode_pg
                              else "embedded", t0, [], half_made_models=0, staging_left=0))  # fmt: skip
