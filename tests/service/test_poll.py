"""GET /v1/jobs/{id}, the poll, has a path of its own (app.api.routes.jobs: Core, and on PostgreSQL
the event loop through app.core.db.aio): it must answer exactly as the ORM path does, refuse what
get_owner refuses in the same order, and survive the database going away and coming back."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.core.apikeys import revoke_key
from app.core.config import Settings
from app.core.db.aio import AsyncReader
from app.core.db.models import Job
from app.core.db.session import session_scope
from tests.service.conftest import make_client, problem, upload

SPEC = {"target": {"flops": 0.5}, "criterion": "l1"}


def _job(api: Any, auth: dict[str, str], zoo: dict[str, Path]) -> dict[str, Any]:
    r = upload(api, auth, zoo["tiny"])
    assert r.status_code in (200, 201), r.text
    r = api.post("/v1/jobs", headers=auth, json={"model_id": r.json()["id"], "spec": SPEC})
    assert r.status_code == 202, r.text
    return r.json()


def test_poll_answers_as_the_orm_path_does(
    api: Any, auth: dict[str, str], zoo: dict[str, Path], settings: Settings
) -> None:
    """Byte for byte the list's item (the ORM and FastAPI's serialization), for a job with every
    field filled: artifacts, a summary, an error, timestamps with microseconds."""
    job = _job(api, auth, zoo)
    with session_scope(settings.database_url) as s:
        row = s.get(Job, job["id"])
        assert row is not None
        row.artifacts = {"report.json": {"size": 12, "sha256": "a" * 64}, "pruned.onnx": {"size": 5, "sha256": "b" * 64}}
        row.summary = {"params": {"before": 10, "after": 7}, "ratio": 0.123456789, "note": "ünïcode"}
        row.error, row.error_code, row.stage, row.progress = "it broke", "internal", "surgery", 0.25
        row.started_at = row.created_at
    polled = api.get(f"/v1/jobs/{job['id']}", headers=auth)
    assert polled.status_code == 200 and polled.headers["content-type"] == "application/json"
    listed = api.get("/v1/jobs", headers=auth).json()["items"]
    item = next(i for i in listed if i["id"] == job["id"])
    assert polled.json() == item
    assert [a["name"] for a in item["artifacts"]] == ["pruned.onnx", "report.json"]
    assert item["created_at"] == polled.json()["created_at"] and item["created_at"].endswith("Z")


def test_poll_refuses_as_get_owner_does(backend: Any, api: Any, new_key: Any, zoo: dict[str, Path]) -> None:
    name = f"poller-{uuid.uuid4().hex[:8]}"
    auth = new_key(name)
    job = _job(api, auth, zoo)
    path = f"/v1/jobs/{job['id']}"
    assert problem(api.get(path), 401)
    assert problem(api.get("/v1/jobs/not-an-id"), 401)  # the key before the parameters
    assert problem(api.get("/v1/jobs/not-an-id", headers={"Authorization": "Bearer spa_nope"}), 401)
    problem(api.get(path + "?x=1"), 401)
    assert "'x'" in problem(api.get(path + "?x=1", headers=auth), 400)["detail"]
    problem(api.get("/v1/jobs/not-an-id", headers=auth), 422)
    problem(api.get("/v1/jobs/" + "f" * 32, headers=auth), 404)
    bob = new_key("bob")
    problem(api.get(path, headers=bob), 404)  # another tenant's job does not exist for bob
    assert api.get(path, headers=auth).status_code == 200
    with session_scope(backend.base.database_url) as s:
        revoke_key(s, name)
    problem(api.get(path, headers=auth), 401)  # at once: no cache on this path either


@pytest.mark.usefixtures("backend")
def test_sqlite_has_no_reader(settings: Settings) -> None:
    assert (AsyncReader.for_url(settings.database_url) is None) == settings.database_url.startswith("sqlite")


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.postgres
@pytest.mark.redis
def test_poll_survives_a_database_restart(
    backend: Any, settings: Settings, auth: dict[str, str], zoo: dict[str, Path]
) -> None:
    """The reader keeps its connections without pinging them: when PostgreSQL drops them (as a
    restart does), the next poll is still a 200, on new ones."""
    with make_client(settings) as api:
        job = _job(api, auth, zoo)
        path = f"/v1/jobs/{job['id']}"
        for _ in range(3):
            assert api.get(path, headers=auth).status_code == 200
        reader: AsyncReader = api.app.state.reader
        assert reader is not None and reader._idle, "the poll ran on the reader and kept its connection"
        pids = [c.info.backend_pid for c in reader._idle]
        admin = sa.create_engine(backend.base.database_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            for pid in pids:
                c.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        admin.dispose()
        r = api.get(path, headers=auth)
        assert r.status_code == 200, r.text
        assert all(c.info.backend_pid not in pids for c in reader._idle)


def test_reader_says_the_database_is_away() -> None:
    """Nothing listening: SQLAlchemy's OperationalError, which the API answers with a 503."""
    reader = AsyncReader.for_url("postgresql+psycopg://postgres@127.0.0.1:1/none")
    assert reader is not None
    with pytest.raises(sa.exc.OperationalError):
        asyncio.run(reader.one(sa.select(sa.literal(1)), {}))
