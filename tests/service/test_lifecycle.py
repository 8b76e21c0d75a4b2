"""A job's name, tags and metadata (stored, returned, filtered); ids in the UUID form; DELETE of
jobs, models and datasets with their blobs; the retention sweep; migration 0004. On PostgreSQL and
on SQLite like the other service tests."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from app.core import retention
from app.core.config import Settings
from app.core.db.models import Dataset, Job, JobEvent, JobTag, Model, utcnow
from app.core.db.session import session_scope
from app.core.storage import make_store
from tests.service.conftest import fresh_database, make_client, problem, upload
from tests.service.test_api import model_id, onnx_like

SPEC = {"target": {"flops": 0.5}, "criterion": "l1"}


def submit(api: Any, auth: dict[str, str], mid: str, **extra: Any) -> dict[str, Any]:
    r = api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": SPEC, **extra})
    assert r.status_code == 202, r.text
    return r.json()


def listed(api: Any, auth: dict[str, str], **params: Any) -> list[str]:
    r = api.get("/v1/jobs", headers=auth, params=params)
    assert r.status_code == 200, r.text
    return [j["id"] for j in r.json()["items"]]


def finish(settings: Settings, job_id: str, **values: Any) -> None:
    """As a worker would have: the job succeeded (with ``values``, e.g. artifacts)."""
    with session_scope(settings.database_url) as s:
        s.execute(
            sa.update(Job).where(Job.id == job_id).values(state="succeeded", finished_at=utcnow(), **values)
        )


def put_artifacts(settings: Settings, tmp: Path, files: dict[str, bytes]) -> dict[str, Any]:
    """Blobs in the store and the names a worker writes on the job."""
    store = make_store(settings)
    out = {}
    for name, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        (tmp / sha).write_bytes(data)
        store.put_file(tmp / sha, sha)
        out[name] = {"sha256": sha, "size": len(data)}
    return out


def dataset(api: Any, auth: dict[str, str], tmp: Path) -> dict[str, Any]:
    path = tmp / f"d-{uuid.uuid4().hex[:6]}.npz"
    np.savez(path, input=np.random.rand(4, 1, 8, 8).astype(np.float32))
    r = upload(api, auth, path, url="/v1/datasets")
    assert r.status_code == 201, r.text
    return r.json()


def uuid_form(id_: str, upper: bool = False) -> str:
    s = str(uuid.UUID(hex=id_))
    return s.upper() if upper else s


# -- name, tags, metadata -----------------------------------------------------------------------


def test_labels_are_stored_returned_and_filter_the_list(
    api: Any, auth: dict[str, str], new_key: Any, tmp_path: Path, settings: Settings
) -> None:
    mid = model_id(api, auth, onnx_like(tmp_path / "m.onnx"))
    meta = {"commit": "9f2c1e", "epoch": 12, "lr": 0.001, "ok": True, "note": None, "ünï": "cödé"}
    a = submit(api, auth, mid, name="resnet nightly", tags=["nightly", "ci", "nightly"], metadata=meta)
    b = submit(api, auth, mid, name="resnet nightly", tags=["ci"])
    c = submit(api, auth, mid, name="other")
    assert a["name"] == "resnet nightly" and a["tags"] == ["nightly", "ci"] and a["metadata"] == meta
    assert c["tags"] == [] and c["metadata"] == {}
    # the poll (its own fast path) and the list answer the same
    assert api.get(f"/v1/jobs/{a['id']}", headers=auth).json() == next(
        j for j in api.get("/v1/jobs", headers=auth).json()["items"] if j["id"] == a["id"]
    )
    assert listed(api, auth, name="resnet nightly") == [b["id"], a["id"]]
    assert listed(api, auth, name="resnet") == []  # exactly, not a prefix
    assert listed(api, auth, tag="ci") == [b["id"], a["id"]]
    assert listed(api, auth, tag="nightly") == [a["id"]]
    assert listed(api, auth, tag=["ci", "nightly"]) == [a["id"]]  # every tag given
    assert listed(api, auth, tag=["ci", "absent"]) == []
    assert listed(api, auth, tag="ci", name="other") == []
    assert listed(api, auth, tag="ci", state="queued", limit=1) == [b["id"]]
    # another tenant's jobs with the same labels are not found
    assert listed(api, new_key("bob"), tag="ci") == []
    with session_scope(settings.database_url) as s:
        tags = s.execute(sa.select(JobTag.tag).where(JobTag.job_id == a["id"])).scalars().all()
    assert sorted(tags) == ["ci", "nightly"]
    for params in ({"tag": "has space"}, {"tag": ""}, {"tag": "x" * 65}, {"name": ""}, {"name": "a\x00b"},
                   {"name": "n" * 101}, {"tag": [f"t{i}" for i in range(17)]}):  # fmt: skip
        problem(api.get("/v1/jobs", headers=auth, params=params), 422)


def test_jobs_without_labels_answer_empty_ones(api: Any, auth: dict[str, str], tmp_path: Path,
                                               settings: Settings) -> None:  # fmt: skip
    """Jobs submitted before revision 0004 have NULL there: no name, no tags, no metadata."""
    job = submit(api, auth, model_id(api, auth, onnx_like(tmp_path / "m.onnx")))
    with session_scope(settings.database_url) as s:
        s.execute(sa.update(Job).where(Job.id == job["id"]).values(name=None, tags=None, metadata_=None))
    got = api.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert (got["name"], got["tags"], got["metadata"]) == (None, [], {})
    assert next(j for j in api.get("/v1/jobs", headers=auth).json()["items"] if j["id"] == job["id"]) == got


@pytest.mark.parametrize(
    "labels",
    [
        {"name": ""},
        {"name": "x" * 101},
        {"name": "line\nbreak"},
        {"tags": ["has space"]},
        {"tags": [f"t{i}" for i in range(17)]},
        {"tags": "ci"},
        {"metadata": {f"k{i}": i for i in range(17)}},
        {"metadata": {"nested": {"a": 1}}},
        {"metadata": {"list": [1]}},
        {"metadata": {"long": "v" * 257}},
        {"metadata": {"k" * 65: 1}},
        {"metadata": {"": 1}},
        {"metadata": ["a"]},
    ],
)
def test_bad_labels_are_422_and_no_job(
    api: Any, auth: dict[str, str], tmp_path: Path, settings: Settings, labels: dict[str, Any]
) -> None:
    mid = model_id(api, auth, onnx_like(tmp_path / "m.onnx"))
    before = len(listed(api, auth))
    problem(api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": SPEC, **labels}), 422)
    assert len(listed(api, auth)) == before


@pytest.mark.parametrize("raw", ['"name": "\\ud800"', '"metadata": {"a": "\\udfff"}', '"metadata": {"\\ud800": 1}',
                                 '"metadata": {"a": NaN}', '"metadata": {"a": Infinity}'])  # fmt: skip
def test_labels_no_answer_could_carry_are_4xx(
    api: Any, auth: dict[str, str], tmp_path: Path, raw: str
) -> None:
    """A lone surrogate (JSON's \\ud800) or NaN would be stored and then break every answer."""
    mid = model_id(api, auth, onnx_like(tmp_path / "m.onnx"))
    body = f'{{"model_id": "{mid}", {raw}}}'
    r = api.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"}, content=body)
    assert r.status_code in (400, 422), r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert listed(api, auth) == []


def test_idempotency_covers_the_labels(api: Any, auth: dict[str, str], tmp_path: Path) -> None:
    mid = model_id(api, auth, onnx_like(tmp_path / "m.onnx"))
    headers = {**auth, "Idempotency-Key": "labels-1"}
    body = {"model_id": mid, "spec": SPEC, "name": "n", "tags": ["a", "b"], "metadata": {"x": 1}}
    first = api.post("/v1/jobs", headers=headers, json=body)
    assert first.status_code == 202
    again = api.post("/v1/jobs", headers=headers, json={**body, "tags": ["a", "b", "a"]})  # the same tags
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    for change in ({"name": "m"}, {"tags": ["b", "a"]}, {"metadata": {"x": 2}}, {"metadata": {}}):
        assert (
            "Idempotency"
            in problem(api.post("/v1/jobs", headers=headers, json={**body, **change}), 422)["title"]
        )
    assert listed(api, auth) == [first.json()["id"]]


# -- ids in the UUID form -----------------------------------------------------------------------


def test_ids_in_uuid_form_find_their_rows(api: Any, auth: dict[str, str], tmp_path: Path) -> None:
    mid = model_id(api, auth, onnx_like(tmp_path / "m.onnx"))
    ds = dataset(api, auth, tmp_path)
    for form in (uuid_form(mid), uuid_form(mid, upper=True), mid.upper()):
        r = api.get(f"/v1/models/{form}", headers=auth)
        assert r.status_code == 200 and r.json()["id"] == mid, (form, r.text)
    assert api.get(f"/v1/datasets/{uuid_form(ds['id'], upper=True)}", headers=auth).json()["id"] == ds["id"]
    # body ids: stored (and handed to the worker) in the 32-hex form
    job = submit(api, auth, uuid_form(mid, upper=True), dataset_id=uuid_form(ds["id"]))
    assert job["model_id"] == mid and job["dataset_id"] == ds["id"]
    assert job["spec"]["calibration"]["dataset_id"] == ds["id"]
    ev = submit(
        api, auth, mid, spec={**SPEC, "calibration": {"eval_dataset_id": uuid_form(ds["id"], upper=True)}}
    )
    assert ev["spec"]["calibration"]["eval_dataset_id"] == ds["id"]
    # the same request with the id spelt otherwise is the same request
    headers = {**auth, "Idempotency-Key": "uuid-form"}
    first = api.post("/v1/jobs", headers=headers, json={"model_id": mid, "spec": SPEC}).json()
    again = api.post("/v1/jobs", headers=headers, json={"model_id": uuid_form(mid), "spec": SPEC})
    assert again.status_code == 202 and again.json()["id"] == first["id"]
    path = f"/v1/jobs/{uuid_form(job['id'])}"
    assert api.get(path, headers=auth).json()["id"] == job["id"]
    assert api.get(path + "/events", headers=auth).json()["items"]
    r = api.post(path + "/cancel", headers=auth)
    assert r.status_code == 202 and r.json() == {"id": job["id"], "state": "cancelled"}
    # a form that is neither is still refused by the pattern; an unknown id in either form is a 404
    for bad in ("0" * 31, uuid_form(mid)[:-1], "{" + uuid_form(mid) + "}", mid[:8] + "-" + mid[8:], "g" * 32):
        problem(api.get(f"/v1/models/{bad}", headers=auth), 422)
    problem(api.get(f"/v1/jobs/{uuid_form('f' * 32)}", headers=auth), 404)
    problem(api.post("/v1/jobs", headers=auth, json={"model_id": uuid_form("e" * 32), "spec": SPEC}), 404)


def test_the_document_admits_both_id_forms(api: Any) -> None:
    import re

    doc = api.get("/openapi.json").json()
    for path, param in (("/v1/jobs/{job_id}", "job_id"), ("/v1/models/{model_id}", "model_id"),
                        ("/v1/datasets/{dataset_id}", "dataset_id")):  # fmt: skip
        for method in ("get", "delete"):
            (p,) = [p for p in doc["paths"][path][method]["parameters"] if p["name"] == param]
            pattern = re.compile(p["schema"]["pattern"])
            assert pattern.search("0123456789abcdef0123456789abcdef")
            assert pattern.search("01234567-89AB-CDEF-0123-456789abcdef")
            assert not pattern.search("0123456789abcdef0123456789abcde")


# -- DELETE -------------------------------------------------------------------------------------


def _rows(settings: Settings, job_id: str) -> tuple[int, int, int]:
    with session_scope(settings.database_url) as s:
        return tuple(  # type: ignore[return-value]
            s.execute(sa.select(sa.func.count()).select_from(cls).where(col == job_id)).scalar_one()
            for cls, col in ((Job, Job.id), (JobEvent, JobEvent.job_id), (JobTag, JobTag.job_id))
        )


def test_delete_a_job(
    api: Any, auth: dict[str, str], new_key: Any, tmp_path: Path, settings: Settings
) -> None:
    mid = model_id(api, auth, onnx_like(tmp_path / "m.onnx"))
    job = submit(api, auth, mid, tags=["x"])
    path = f"/v1/jobs/{job['id']}"
    body = problem(api.delete(path, headers=auth), 409)
    assert "cancel it first" in body["detail"] and body["state"] == "queued"
    assert api.post(path + "/cancel", headers=auth).status_code == 202
    problem(api.delete(path, headers=new_key("bob")), 404)  # another tenant's job does not exist
    assert _rows(settings, job["id"])[0] == 1
    r = api.delete(f"/v1/jobs/{uuid_form(job['id'])}", headers=auth)
    assert r.status_code == 204 and r.content == b""
    assert _rows(settings, job["id"]) == (0, 0, 0)
    problem(api.get(path, headers=auth), 404)
    problem(api.get(path + "/events", headers=auth), 404)
    problem(api.delete(path, headers=auth), 404)
    problem(api.delete("/v1/jobs/" + "f" * 32, headers=auth), 404)
    assert listed(api, auth, tag="x") == []
    # running and cancelling jobs are not deleted either (a fresh heartbeat: the API's sweeper would
    # re-queue a running job without one, and the answer would say "queued")
    for state in ("running", "cancelling"):
        other = submit(api, auth, mid)
        with session_scope(settings.database_url) as s:
            s.execute(sa.update(Job).where(Job.id == other["id"]).values(state=state, heartbeat_at=utcnow()))
        assert problem(api.delete(f"/v1/jobs/{other['id']}", headers=auth), 409)["state"] == state


def test_deleting_jobs_releases_artifacts_nothing_else_uses(
    api: Any, auth: dict[str, str], tmp_path: Path, settings: Settings
) -> None:
    mid = model_id(api, auth, onnx_like(tmp_path / "m.onnx"))
    shared, own = uuid.uuid4().bytes, uuid.uuid4().bytes
    first, second = submit(api, auth, mid), submit(api, auth, mid)
    arts1 = put_artifacts(settings, tmp_path, {"report.json": shared, "pruned.onnx": own})
    arts2 = put_artifacts(settings, tmp_path, {"report.json": shared})
    finish(settings, first["id"], artifacts=arts1)
    finish(settings, second["id"], artifacts=arts2)
    store = make_store(settings)
    sha_shared, sha_own = arts1["report.json"]["sha256"], arts1["pruned.onnx"]["sha256"]
    assert api.delete(f"/v1/jobs/{first['id']}", headers=auth).status_code == 204
    assert not store.exists(sha_own) and store.exists(sha_shared)  # the second job still has it
    got = api.get(f"/v1/jobs/{second['id']}/artifacts/report.json", headers=auth)
    assert got.status_code == 200 and got.content == shared
    assert api.delete(f"/v1/jobs/{second['id']}", headers=auth).status_code == 204
    assert not store.exists(sha_shared)


def test_delete_a_model(
    api: Any, auth: dict[str, str], new_key: Any, tmp_path: Path, settings: Settings
) -> None:
    path = onnx_like(tmp_path / "m.onnx")
    mid = model_id(api, auth, path)
    bob = new_key("bob")
    bob_mid = model_id(api, bob, path)  # the same bytes: one blob for both
    sha = api.get(f"/v1/models/{mid}", headers=auth).json()["sha256"]
    store = make_store(settings)
    job = submit(api, auth, mid)
    assert "cancel them first" in problem(api.delete(f"/v1/models/{mid}", headers=auth), 409)["detail"]
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    # a finished job's record still names its model
    assert "delete them first" in problem(api.delete(f"/v1/models/{mid}", headers=auth), 409)["detail"]
    assert api.delete(f"/v1/jobs/{job['id']}", headers=auth).status_code == 204
    problem(api.delete(f"/v1/models/{mid}", headers=bob), 404)
    assert api.delete(f"/v1/models/{uuid_form(mid, upper=True)}", headers=auth).status_code == 204
    problem(api.get(f"/v1/models/{mid}", headers=auth), 404)
    problem(api.delete(f"/v1/models/{mid}", headers=auth), 404)
    assert store.exists(sha)  # bob's model has the same bytes
    assert api.get(f"/v1/models/{bob_mid}", headers=bob).status_code == 200
    assert api.delete(f"/v1/models/{bob_mid}", headers=bob).status_code == 204
    assert not store.exists(sha)
    # and the same bytes can be uploaded again afterwards
    again = upload(api, auth, path)
    assert again.status_code == 201 and store.exists(sha)


def test_delete_a_dataset(
    api: Any, auth: dict[str, str], new_key: Any, tmp_path: Path, settings: Settings
) -> None:
    mid = model_id(api, auth, onnx_like(tmp_path / "m.onnx"))
    cal, ev = dataset(api, auth, tmp_path), dataset(api, auth, tmp_path)
    store = make_store(settings)
    job = submit(
        api, auth, mid, dataset_id=cal["id"], spec={**SPEC, "calibration": {"eval_dataset_id": ev["id"]}}
    )
    for ds in (cal, ev):  # calibration data, and evaluation data named in the spec only
        detail = problem(api.delete(f"/v1/datasets/{ds['id']}", headers=auth), 409)["detail"]
        assert detail.startswith("1 queued or running job(s)") and "cancel them first" in detail
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    problem(api.delete(f"/v1/datasets/{cal['id']}", headers=auth), 409)  # the finished job's dataset_id
    problem(api.delete(f"/v1/datasets/{ev['id']}", headers=new_key("bob")), 404)
    # a finished job will not read its eval data again
    assert api.delete(f"/v1/datasets/{uuid_form(ev['id'])}", headers=auth).status_code == 204
    assert not store.exists(ev["sha256"]) and store.exists(cal["sha256"])
    problem(api.get(f"/v1/datasets/{ev['id']}", headers=auth), 404)
    assert api.delete(f"/v1/jobs/{job['id']}", headers=auth).status_code == 204
    assert api.delete(f"/v1/datasets/{cal['id']}", headers=auth).status_code == 204
    assert not store.exists(cal["sha256"])


def test_a_blob_an_artifact_shares_is_kept(
    api: Any, auth: dict[str, str], tmp_path: Path, settings: Settings
) -> None:
    """A job's pruned.onnx uploaded again as a model: deleting the model keeps the artifact's bytes."""
    data = onnx_like(tmp_path / "pruned.onnx").read_bytes()
    src = model_id(api, auth, onnx_like(tmp_path / "src.onnx"))
    job = submit(api, auth, src)
    arts = put_artifacts(settings, tmp_path, {"pruned.onnx": data})
    finish(settings, job["id"], artifacts=arts)
    again = model_id(api, auth, tmp_path / "pruned.onnx")
    assert api.delete(f"/v1/models/{again}", headers=auth).status_code == 204
    assert api.get(f"/v1/jobs/{job['id']}/artifacts/pruned.onnx", headers=auth).content == data


# -- retention ----------------------------------------------------------------------------------


def test_retention_sweep(private_settings: Settings, tmp_path: Path) -> None:
    """Finished jobs older than retention_days go (with their artifacts), then old models and
    datasets no job refers to; what is recent, unfinished or still referred to stays."""
    from app.core.apikeys import create_key
    from app.core.queue import make_celery
    from app.core.sweeper import sweep_once

    settings = private_settings.model_copy(update={"storage_dir": tmp_path / "blobs"})
    store = make_store(settings)
    with session_scope(settings.database_url) as s:
        auth = {"Authorization": f"Bearer {create_key(s, 'keeper')[1]}"}
    with make_client(settings) as api:
        m_old, m_used, m_new = (
            model_id(api, auth, onnx_like(tmp_path / f"{n}.onnx")) for n in ("o", "u", "n")
        )
        ds_old = dataset(api, auth, tmp_path)
        old_done, new_done = submit(api, auth, m_old), submit(api, auth, m_old)
        old_queued = submit(api, auth, m_used)
        arts = put_artifacts(settings, tmp_path, {"report.json": uuid.uuid4().bytes})
        finish(settings, old_done["id"], artifacts=arts)
        finish(settings, new_done["id"])
    long_ago = utcnow() - timedelta(days=3)
    with session_scope(settings.database_url) as s:
        s.execute(sa.update(Job).where(Job.id.in_([old_done["id"], old_queued["id"]]))
                  .values(created_at=long_ago, finished_at=long_ago))  # fmt: skip
        s.execute(sa.update(Job).where(Job.id == old_queued["id"]).values(finished_at=None))
        s.execute(sa.update(Model).values(created_at=long_ago, state="ready"))
        s.execute(sa.update(Dataset).values(created_at=long_ago))
        s.execute(sa.update(Model).where(Model.id == m_new).values(created_at=utcnow()))

    def ids(cls: Any) -> set[str]:
        with session_scope(settings.database_url) as s:
            return set(s.execute(sa.select(cls.id)).scalars())

    before = (ids(Job), ids(Model), ids(Dataset))
    assert retention.sweep_retention(settings) == {}  # 0: keep forever, the default
    assert Settings().retention_days == 0
    assert (ids(Job), ids(Model), ids(Dataset)) == before

    kept = settings.model_copy(update={"retention_days": 1.0, "api_sweeps": False})
    out = sweep_once(kept, make_celery(kept))
    assert out[old_done["id"]] == "job deleted (retention)"
    assert out[ds_old["id"]] == "dataset deleted (retention)"
    # m_old lost its last old job, but a recent finished job still refers to it
    assert ids(Job) == {new_done["id"], old_queued["id"]}
    assert ids(Model) == {m_old, m_used, m_new} and ids(Dataset) == set()
    assert not store.exists(arts["report.json"]["sha256"]) and not store.exists(ds_old["sha256"])
    assert retention.sweep_retention(kept) == {}  # nothing more is old enough

    with session_scope(settings.database_url) as s:  # the recent job ages too
        s.execute(sa.update(Job).where(Job.id == new_done["id"]).values(finished_at=long_ago))
    out = retention.sweep_retention(kept)
    assert out == {new_done["id"]: "job deleted (retention)", m_old: "model deleted (retention)"}


# -- migration ----------------------------------------------------------------------------------


def test_migration_0004_keeps_existing_jobs(backend: Any, tmp_path: Path) -> None:
    """``spa db upgrade`` from 0003: the columns and job_tags appear, existing jobs keep their rows
    with no labels, and the new columns take labels."""
    from app.core.db.migrate import upgrade

    with fresh_database(backend.name, tmp_path) as url:
        upgrade(url, "0003")
        engine = sa.create_engine(url)
        now = utcnow()
        with engine.begin() as c:
            c.execute(sa.text("INSERT INTO models (id, owner_id, sha256, size, filename, format, state, attempts, "
                              "created_at, updated_at) VALUES ('m1', 'o', :sha, 1, 'm.onnx', 'onnx', 'ready', 0, "
                              ":now, :now)"), {"sha": "a" * 64, "now": now})  # fmt: skip
            c.execute(sa.text("INSERT INTO jobs (id, owner_id, model_id, spec, request_hash, queue, state, "
                              "progress, attempts, created_at, next_seq, resends) VALUES ('j1', 'o', 'm1', '{}', "
                              "'h', 'cpu', 'queued', 0, 0, :now, 1, 0)"), {"now": now})  # fmt: skip
        upgrade(url)
        insp = sa.inspect(engine)
        assert {"name", "tags", "metadata"} <= {c["name"] for c in insp.get_columns("jobs")}
        assert "job_tags" in insp.get_table_names()
        with engine.begin() as c:
            assert c.execute(sa.text("SELECT name, tags, metadata FROM jobs")).one() == (None, None, None)
            c.execute(sa.text("INSERT INTO job_tags (job_id, tag) VALUES ('j1', 'x')"))
            assert c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0004"
        engine.dispose()
