"""The REST API without a worker: uploads, validation, auth, tenancy, idempotency, pagination,
cancel of queued jobs, health. Each runs on PostgreSQL+Redis and on SQLite+SQLAlchemy broker."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from app.core.config import Settings
from app.core.db.models import Dataset, Job, JobEvent, Model
from app.core.db.session import session_scope
from tests.service.conftest import make_client, problem, upload

SPEC = {"target": {"flops": 0.5}, "criterion": "l1"}


def counts(settings: Settings) -> dict[str, int]:
    with session_scope(settings.database_url) as s:
        return {
            cls.__tablename__: s.execute(sa.select(sa.func.count()).select_from(cls)).scalar_one()
            for cls in (Model, Dataset, Job, JobEvent)
        }


def stored_blobs(settings: Settings) -> list[Path]:
    """Everything in the local store, staging included: a failed upload must leave nothing."""
    assert settings.storage_dir is not None
    return (
        sorted(p for p in settings.storage_dir.rglob("*") if p.is_file())
        if settings.storage_dir.exists()
        else []
    )


def onnx_like(path: Path) -> Path:
    """Fresh bytes that pass the API's whole ONNX check (they start like a ModelProto)."""
    path.write_bytes(b"\x08\x07" + os.urandom(64))
    return path


def model_id(api: Any, auth: dict[str, str], path: Path) -> str:
    r = upload(api, auth, path)
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def test_openapi_documents_every_route_and_error(api: Any) -> None:
    doc = api.get("/openapi.json").json()
    assert "Problem" in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert doc["paths"]["/v1/jobs"]["post"]["security"] == [{"HTTPBearer": []}]
    post_jobs = doc["paths"]["/v1/jobs"]["post"]["responses"]
    assert {"202", "401", "404", "422", "503"} <= set(post_jobs)
    assert set(post_jobs["422"]["content"]) == {"application/problem+json"}
    assert post_jobs["422"]["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert {"201", "200", "413", "415", "422"} <= set(doc["paths"]["/v1/models"]["post"]["responses"])
    assert "multipart/form-data" in doc["paths"]["/v1/models"]["post"]["requestBody"]["content"]
    assert {"409", "404"} <= set(doc["paths"]["/v1/jobs/{job_id}/cancel"]["post"]["responses"])
    for path in ("/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/artifacts/{name}", "/v1/models/{model_id}/groups",
                 "/v1/datasets", "/livez", "/readyz", "/metrics"):  # fmt: skip
        assert path in doc["paths"]


def test_auth_required(api: Any) -> None:
    r = api.get("/v1/models")
    assert problem(r, 401) and r.headers["www-authenticate"].startswith("Bearer")
    problem(api.get("/v1/jobs", headers={"Authorization": "Bearer spa_not-a-key"}), 401)
    problem(api.get("/v1/jobs", headers={"Authorization": "Basic Zm9vOmJhcg=="}), 401)


def test_no_auth_mode_serves_loopback_only(settings: Settings) -> None:
    open_settings = Settings(**{**settings.model_dump(), "auth_disabled": True})
    with make_client(open_settings, ("127.0.0.1", 40000)) as local:
        assert local.get("/v1/models").status_code == 200
    with make_client(open_settings, ("10.1.2.3", 40000)) as remote:
        problem(remote.get("/v1/models"), 403)


def test_upload_dedup_per_owner(
    api: Any, auth: dict[str, str], new_key: Any, zoo: dict[str, Path], settings: Settings
) -> None:
    first = upload(api, auth, zoo["tiny"])
    assert first.status_code == 201, first.text
    body = first.json()
    assert (
        body["state"] == "validating"
        and body["format"] == "onnx"
        and body["size"] == zoo["tiny"].stat().st_size
    )
    assert first.headers["location"] == f"/v1/models/{body['id']}"
    again = upload(api, auth, zoo["tiny"], name="renamed.onnx")
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    # Another tenant uploading the same bytes gets its own model (the blob itself is shared).
    other = upload(api, new_key("bob"), zoo["tiny"])
    assert other.status_code == 201 and other.json()["id"] != body["id"]
    blobs = [p for p in stored_blobs(settings) if ".staging" not in p.parts]
    assert [p.name for p in blobs].count(body["sha256"]) == 1
    # Content-addressed: the stored name is the digest, never the client's file name.
    assert not any("tiny" in str(p) for p in stored_blobs(settings))


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


BAD_MODELS = {
    "text-as-onnx": ("model.onnx", b"hello, I am not a model\n" * 10, 422),
    "empty": ("model.onnx", b"", 422),
    "zip-as-onnx": ("model.onnx", _zip({"model.onnx": b"\x08\x07"}), 422),
    "unknown-extension": ("model.txt", b"\x08\x07", 415),
    "zip-dotdot": ("model.zip", _zip({"model.onnx": b"\x08\x07", "../evil.data": b"x"}), 422),
    "zip-absolute": ("model.zip", _zip({"model.onnx": b"\x08\x07", "/etc/evil": b"x"}), 422),
    "zip-without-onnx": ("model.zip", _zip({"weights.bin": b"x"}), 422),
    "not-a-zip": ("model.zip", b"\x08\x07not a zip", 422),
    "pt2-not-a-zip": ("model.pt2", b"hello", 422),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_upload_is_rejected_and_leaves_nothing(
    api: Any, auth: dict[str, str], settings: Settings, case: str
) -> None:
    name, data, status = BAD_MODELS[case]
    before = counts(settings), stored_blobs(settings)
    r = api.post("/v1/models", headers=auth, files={"file": (name, data, "application/octet-stream")})
    body = problem(r, status)
    assert body["detail"]
    assert (counts(settings), stored_blobs(settings)) == before


def test_upload_protocol_errors(api: Any, auth: dict[str, str], settings: Settings) -> None:
    before = counts(settings), stored_blobs(settings)
    problem(api.post("/v1/models", headers=auth, content=b"\x08\x07raw"), 415)  # not multipart
    problem(
        api.post("/v1/models", headers=auth, data={"other": "x"}, files={"notfile": ("a.onnx", b"\x08")}), 422
    )
    assert (counts(settings), stored_blobs(settings)) == before


def test_oversized_upload_413(settings: Settings, new_key: Any) -> None:
    small = Settings(**{**settings.model_dump(), "max_upload_bytes": 4096})
    auth = new_key("big")
    before = counts(small), stored_blobs(small)
    payload = b"\x08\x07" + b"\x00" * 10_000
    with make_client(small) as api:
        # Declared Content-Length above the limit: refused before the body is read.
        problem(api.post("/v1/models", headers=auth, files={"file": ("m.onnx", payload)}), 413)
        # No Content-Length (chunked): cut off while streaming, the partial file removed.
        boundary = "spa-test-boundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n\r\n'.encode()
        )

        def chunks() -> Any:
            yield head
            for i in range(0, len(payload), 1000):
                yield payload[i : i + 1000]
            yield f"\r\n--{boundary}--\r\n".encode()

        r = api.post(
            "/v1/models",
            headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=chunks(),
        )
        problem(r, 413)
    assert (counts(small), stored_blobs(small)) == before


@pytest.mark.parametrize(
    "spec",
    [
        {"target": {"flops": 0.5}, "criterion": "no-such-criterion"},
        {"target": {"flops": 1.5}, "criterion": "l1"},
        {"target": {"flops": 0.5, "params": 0.5}},
        {"target": {"flops": 0.5}, "unknown_field": 1},
        {"target": {"channels": 0}},
        {"target": {"latency": 1.0}},
        {"target": {"latency": 0.5}, "runtime": {"provider": "tpu"}},
        {"target": {"flops": 0.5}, "runtime": {"threads": 0}},
        {"target": {"flops": 0.5}, "round_to": "fast"},
    ],
    ids=["unknown-criterion", "target-1.5", "two-targets", "extra-field", "target-0", "latency-1",
         "unknown-provider", "threads-0", "round-to-word"],
)
def test_bad_spec_422_and_no_job(
    api: Any, auth: dict[str, str], zoo: dict[str, Path], settings: Settings, spec: dict[str, Any]
) -> None:
    mid = model_id(api, auth, zoo["tiny"])
    before = counts(settings)
    body = problem(api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": spec}), 422)
    assert body["errors"] and "spec" in body["errors"][0]["loc"]
    assert counts(settings) == before


def test_submit_get_events(api: Any, auth: dict[str, str], zoo: dict[str, Path], settings: Settings) -> None:
    mid = model_id(api, auth, zoo["tiny"])
    r = api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": SPEC})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["queue"] == settings.queue_cpu and job["attempts"] == 0
    assert job["spec"]["target"] == {"flops": 0.5, "params": None, "channels": None, "latency": None}
    assert job["spec"]["round_to"] == "auto" and job["spec"]["runtime"] == {"provider": "cpu", "threads": 2, "batch": None}
    got = api.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert got["id"] == job["id"] and got["artifacts"] == []
    events = api.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()
    # no worker consumes this test's queues: the job says so rather than wait in silence
    assert [e["seq"] for e in events["items"]] == [1, 2] and events["items"][0]["kind"] == "state"
    assert f"no worker is consuming queue '{settings.queue_cpu}'" in events["items"][1]["message"]
    assert api.get(f"/v1/jobs/{job['id']}/events?after=2", headers=auth).json() == {
        "items": [],
        "next_after": 2,
    }
    ready = api.get("/readyz").json()
    assert ready["queues"][settings.queue_cpu] == {"workers": 0, "consumed": False}
    # a spec that asks for a device goes to the GPU queue
    gpu = api.post(
        "/v1/jobs", headers=auth, json={"model_id": mid, "spec": {**SPEC, "device": "cuda"}}
    ).json()
    assert gpu["queue"] == settings.queue_gpu


def test_idempotency_key(
    api: Any, auth: dict[str, str], new_key: Any, zoo: dict[str, Path], settings: Settings
) -> None:
    mid = model_id(api, auth, zoo["tiny"])
    headers = {**auth, "Idempotency-Key": "build-42"}
    first = api.post("/v1/jobs", headers=headers, json={"model_id": mid, "spec": SPEC})
    assert first.status_code == 202
    n = counts(settings)["jobs"]
    # The same body, spelled differently (defaults written out), is the same request.
    again = api.post("/v1/jobs", headers=headers, json={"model_id": mid, "spec": {**SPEC, "scope": "global"}})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert counts(settings)["jobs"] == n
    other = api.post("/v1/jobs", headers=headers, json={"model_id": mid, "spec": {**SPEC, "criterion": "l2"}})
    assert "Idempotency" in problem(other, 422)["title"]
    assert counts(settings)["jobs"] == n
    # Keys are per tenant: bob's "build-42" is his own.
    bob = new_key("bob")
    bob_model = model_id(api, bob, zoo["tiny"])
    r = api.post(
        "/v1/jobs", headers={**bob, "Idempotency-Key": "build-42"}, json={"model_id": bob_model, "spec": SPEC}
    )
    assert r.status_code == 202 and r.json()["id"] != first.json()["id"]


def test_tenant_isolation(
    api: Any, auth: dict[str, str], new_key: Any, zoo: dict[str, Path], tmp_path: Path
) -> None:
    mid = model_id(api, auth, zoo["tiny"])
    job = api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": SPEC}).json()
    np.savez(tmp_path / "d.npz", input=np.zeros((2, 1, 16, 16), np.float32))
    ds = upload(api, auth, tmp_path / "d.npz", url="/v1/datasets").json()
    bob = new_key("bob")
    for path in (
        f"/v1/models/{mid}", f"/v1/models/{mid}/groups", f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/events",
        f"/v1/jobs/{job['id']}/artifacts/pruned.onnx", f"/v1/datasets/{ds['id']}",
    ):  # fmt: skip
        assert problem(api.get(path, headers=bob), 404)["detail"].endswith("not found")
    problem(api.post(f"/v1/jobs/{job['id']}/cancel", headers=bob), 404)
    problem(api.post("/v1/jobs", headers=bob, json={"model_id": mid, "spec": SPEC}), 404)
    bob_model = model_id(api, bob, zoo["tiny"])
    problem(
        api.post("/v1/jobs", headers=bob, json={"model_id": bob_model, "spec": SPEC, "dataset_id": ds["id"]}),
        404,
    )
    for path in ("/v1/models", "/v1/jobs", "/v1/datasets"):
        ids = {i["id"] for i in api.get(path, headers=bob).json()["items"]}
        assert not ids & {mid, job["id"], ds["id"]}
    assert api.get(f"/v1/jobs/{job['id']}", headers=auth).status_code == 200  # alice still sees it


# ("A" * 32 is an id in upper case: a 404, tests/service/test_lifecycle.py)
@pytest.mark.parametrize("bad", ["not-hex", "0" * 31, "../../etc/passwd", "G" * 32, "0" * 8 + "-" + "0" * 24])
def test_malformed_ids_422(api: Any, auth: dict[str, str], bad: str) -> None:
    r = api.get(f"/v1/jobs/{bad}", headers=auth)
    assert r.status_code in (404, 422)
    assert r.headers["content-type"].startswith("application/problem+json")
    if "/" not in bad:
        problem(r, 422)


def test_unknown_ids_404(api: Any, auth: dict[str, str]) -> None:
    missing = "f" * 32
    problem(api.get(f"/v1/jobs/{missing}", headers=auth), 404)
    problem(api.get(f"/v1/models/{missing}", headers=auth), 404)
    problem(api.post("/v1/jobs", headers=auth, json={"model_id": missing, "spec": SPEC}), 404)
    problem(api.post(f"/v1/jobs/{missing}/cancel", headers=auth), 404)


def test_cancel_queued_then_409(api: Any, auth: dict[str, str], zoo: dict[str, Path]) -> None:
    mid = model_id(api, auth, zoo["tiny"])
    job = api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": SPEC}).json()
    r = api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 202 and r.json() == {"id": job["id"], "state": "cancelled"}
    got = api.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert got["state"] == "cancelled" and got["finished_at"] and got["started_at"] is None
    assert problem(api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth), 409)["state"] == "cancelled"


def test_pagination(api: Any, new_key: Any, zoo: dict[str, Path]) -> None:
    auth = new_key("pager")
    mid = model_id(api, auth, zoo["tiny"])
    made = [
        api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": SPEC}).json()["id"]
        for _ in range(5)
    ]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/jobs", headers=auth, params=params).json()
        seen += [j["id"] for j in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 3 and seen == list(reversed(made))  # newest first, no gaps, no repeats
    problem(api.get("/v1/jobs", headers=auth, params={"cursor": "%%%"}), 422)
    problem(api.get("/v1/jobs", headers=auth, params={"limit": 0}), 422)
    assert len(api.get("/v1/jobs", headers=auth, params={"state": "queued"}).json()["items"]) == 5
    assert api.get("/v1/jobs", headers=auth, params={"state": "succeeded"}).json()["items"] == []


def test_datasets(api: Any, auth: dict[str, str], tmp_path: Path, settings: Settings) -> None:
    good = tmp_path / "calib.npz"
    np.savez(good, input=np.random.rand(4, 1, 16, 16).astype(np.float32), labels=np.arange(4))
    r = upload(api, auth, good, url="/v1/datasets")
    assert r.status_code == 201, r.text
    assert r.json()["arrays"] == {
        "input": {"shape": [4, 1, 16, 16], "dtype": "float32"},
        "labels": {"shape": [4], "dtype": "int64"},
    }
    assert upload(api, auth, good, url="/v1/datasets").json()["id"] == r.json()["id"]
    before = counts(settings), stored_blobs(settings)
    np.savez(tmp_path / "objects.npz", input=np.array([{"a": 1}], dtype=object))
    (tmp_path / "text.npz").write_text("not a zip")
    np.savez(tmp_path / "empty.npz")
    for name in ("objects.npz", "text.npz", "empty.npz"):
        problem(upload(api, auth, tmp_path / name, url="/v1/datasets"), 422)
    (tmp_path / "data.csv").write_text("1,2,3")
    problem(upload(api, auth, tmp_path / "data.csv", url="/v1/datasets"), 415)
    assert (counts(settings), stored_blobs(settings)) == before


def test_broker_down_503_leaves_nothing(settings: Settings, new_key: Any, zoo: dict[str, Path]) -> None:
    auth = new_key("nobroker")
    with make_client(settings) as api:
        mid = model_id(api, auth, zoo["tiny"])
    down = Settings(**{**settings.model_dump(), "broker_url": "redis://127.0.0.1:1/0"})
    before = counts(settings)
    with make_client(down) as api:
        api.app.state.celery.conf.broker_connection_max_retries = 0
        api.app.state.celery.conf.broker_transport_options = {"max_retries": 0}
        problem(api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": SPEC}), 503)
        blobs = stored_blobs(settings)
        fresh = b"\x08\x07" + os.urandom(512)  # bytes nobody stored before
        problem(api.post("/v1/models", headers=auth, files={"file": ("new.onnx", fresh)}), 503)
        assert stored_blobs(settings) == blobs  # published for the row, then removed with it
        body = problem(api.get("/readyz"), 503)
        assert body["checks"]["database"] == "ok" and body["checks"]["broker"].startswith("error")
    assert counts(settings) == before


def test_health_and_metrics(api: Any, auth: dict[str, str]) -> None:
    assert api.get("/livez").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "database": "ok",
        "broker": "ok",
        "storage": "ok",
    }
    api.get("/v1/jobs", headers=auth)
    # Operator information: behind a key when auth is on (SPA_METRICS_PUBLIC opens it).
    assert problem(api.get("/metrics"), 401)
    assert problem(api.get("/metrics", headers={"Authorization": "Bearer nope"}), 401)
    text = api.get("/metrics", headers=auth).text
    assert 'spa_http_requests_total{method="GET",route="/v1/jobs",status="200"}' in text
    assert 'spa_jobs{state="queued"}' in text


def test_metrics_from_the_database(private_settings: Settings, new_key: Any) -> None:
    """Failures by code, live workers per queue, queue wait and run time of recent jobs, and the
    process's own figures, read at scrape time."""
    from datetime import timedelta

    from app.core import workers
    from app.core.db.models import utcnow

    now = utcnow()
    with session_scope(private_settings.database_url) as s:
        m = Model(owner_id="o", sha256="ab" * 32, size=1, filename="m.onnx", format="onnx", state="ready")
        s.add(m)
        s.flush()
        for state, code, wait, run in (("succeeded", None, 3, 20), ("failed", "time_limit", 100, 7000),
                                       ("failed", "time_limit", 2, 1), ("running", None, 40, None)):
            s.add(Job(owner_id="o", model_id=m.id, spec={}, request_hash="h", queue=private_settings.queue_cpu,
                      state=state, error_code=code, created_at=now - timedelta(seconds=wait + (run or 0)),
                      started_at=now - timedelta(seconds=run or 0), heartbeat_at=now if run is None else None,
                      finished_at=now if run is not None else None))  # fmt: skip
        workers.beat(s, "w1", [private_settings.queue_cpu])
    with make_client(private_settings.model_copy(update={"metrics_public": True})) as client:
        text = client.get("/metrics").text
    assert 'spa_job_failures{code="time_limit"} 2.0' in text
    assert f'spa_workers_alive{{queue="{private_settings.queue_cpu}"}} 1.0' in text
    assert f'spa_workers_alive{{queue="{private_settings.queue_gpu}"}} 0.0' in text
    assert 'spa_job_queue_wait_seconds_bucket{le="5"} 2.0' in text  # waits 3 and 2 s
    assert 'spa_job_queue_wait_seconds_gcount 4.0' in text
    assert 'spa_job_run_seconds_bucket{le="60"} 2.0' in text and 'spa_job_run_seconds_gcount 3.0' in text
    assert "process_resident_memory_bytes" in text


def test_metrics_public_when_the_operator_says_so(settings: Settings) -> None:
    with make_client(settings.model_copy(update={"metrics_public": True})) as client:
        r = client.get("/metrics")
    assert r.status_code == 200 and "spa_http_requests_total" in r.text


def test_dashboard_pages(api: Any) -> None:
    """The dashboard's shells need no key (they hold no data) and carry a CSP that admits only this
    origin's scripts; ids in either form open a page, anything else is a 404 page; only the
    dashboard's own files are served. The pages themselves run in Chromium in test_dashboard_browser."""
    jid = "ab" * 16
    for path in ("/", f"/jobs/{jid}", f"/models/{jid}", "/jobs/ABABABAB-abab-abab-abab-abababababab"):
        r = api.get(path)
        assert r.status_code == 200 and "SPA service" in r.text, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert "<script>" not in r.text  # no inline script: the CSP would refuse it
    assert f'data-job-id="{jid}"' in api.get("/jobs/ABABABAB-abab-abab-abab-abababababab").text
    missing = api.get("/jobs/%3Cimg%20src=x%20onerror=alert(1)%3E")
    assert missing.status_code == 404 and "not a job id" in missing.text
    assert "<img" not in missing.text and "&lt;img src=x onerror=alert(1)&gt;" in missing.text
    for name, media in (("dashboard.js", "text/javascript"), ("job.js", "text/javascript"),
                        ("common.js", "text/javascript"), ("style.css", "text/css")):
        r = api.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(media), name
    for bad in ("../pages.py", "..%2Fpages.py", "pages.py", "index.html"):
        assert api.get(f"/static/{bad}").status_code == 404, bad


def test_pytorch_uploads_can_be_refused(backend: Any, auth: dict[str, str]) -> None:
    """SPA_ALLOW_PYTORCH_UPLOADS=false: a .pt2 is a program; the operator refuses it with 403."""
    settings = backend.settings("idle", allow_pytorch_uploads=False)
    with make_client(settings) as client:
        before = counts(settings), stored_blobs(settings)
        data = _zip({"archive/data.pkl": b"x"})
        body = problem(client.post("/v1/models", headers=auth,
                                   files={"file": ("model.pt2", data, "application/octet-stream")}), 403)
        assert "SPA_ALLOW_PYTORCH_UPLOADS" in body["detail"]
        assert (counts(settings), stored_blobs(settings)) == before


@pytest.mark.parametrize("cursor", [
    "MjAyNC0wMS0wMVQwMDowMDowMHwnIE9SIDE9MSAtLQ",  # the old base64 form ("2024-01-01T00:00:00|' OR 1=1 --")
    "1-" + "F" * 32, "1-" + "f" * 31, "1" * 19 + "-" + "f" * 32, "-1-" + "f" * 32, "1.5-" + "f" * 32,
    "1-" + "f" * 31 + "\x00", "%%%", "",
])
def test_malformed_cursors_are_422(api: Any, auth: dict[str, str], cursor: str) -> None:
    for route in ("/v1/jobs", "/v1/models", "/v1/datasets"):
        assert problem(api.get(route, headers=auth, params={"cursor": cursor}), 422)["detail"]


def test_every_cursor_the_document_allows_is_a_page(api: Any, new_key: Any, tmp_path: Path) -> None:
    """The document's cursor pattern is the whole contract: any string it admits is a position
    (earlier, a 200-digit "0..." passed the document's max_length and was refused)."""
    auth = new_key("cursors")
    made = [model_id(api, auth, onnx_like(tmp_path / f"m{i}.onnx")) for i in range(3)]
    for route, ids in (("/v1/models", made), ("/v1/jobs", []), ("/v1/datasets", [])):
        for cursor, expect in (
            ("0-" + "0" * 32, []),  # before 1970: nothing is older
            ("9" * 18 + "-" + "f" * 32, list(reversed(ids))),  # past year 9999: everything is older
        ):
            r = api.get(route, headers=auth, params={"cursor": cursor})
            assert r.status_code == 200, r.text
            assert [m["id"] for m in r.json()["items"]] == expect
    # a cursor the API wrote is its own position: the next page starts right after it
    first = api.get("/v1/models", headers=auth, params={"limit": 1}).json()
    rest = api.get("/v1/models", headers=auth, params={"cursor": first["next_cursor"]}).json()
    assert [m["id"] for m in first["items"] + rest["items"]] == list(reversed(made))


@pytest.mark.parametrize("after", ["100000000000000000000", str(2**63), "-1", "1e3"])
def test_event_cursor_beyond_int64_is_422(api: Any, auth: dict[str, str], zoo: dict[str, Path], after: str) -> None:
    mid = model_id(api, auth, zoo["tiny"])
    job = api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": SPEC}).json()
    problem(api.get(f"/v1/jobs/{job['id']}/events", headers=auth, params={"after": after}), 422)
    last = api.get(f"/v1/jobs/{job['id']}/events", headers=auth, params={"after": str(2**31 - 1)})
    assert last.status_code == 200 and last.json()["items"] == []


@pytest.mark.parametrize("where", ["calibration", "eval", "body"])
def test_empty_dataset_id_is_422_and_no_job(api: Any, auth: dict[str, str], zoo: dict[str, Path],
                                            settings: Settings, where: str) -> None:
    mid = model_id(api, auth, zoo["tiny"])
    before = counts(settings)
    body: dict[str, Any] = {"model_id": mid, "spec": SPEC}
    if where == "body":
        body["dataset_id"] = ""
    else:
        key = "dataset_id" if where == "calibration" else "eval_dataset_id"
        body["spec"] = {**SPEC, "calibration": {key: ""}}
    problem(api.post("/v1/jobs", headers=auth, json=body), 422)
    assert counts(settings) == before


def test_nul_in_ids_names_and_keys_is_4xx_not_500(
    api: Any, auth: dict[str, str], tmp_path: Path, settings: Settings
) -> None:
    """PostgreSQL refuses a NUL in a text parameter: an id, a file name or an Idempotency-Key with
    one was a 500 there. An id that cannot be one is not found; the others are refused as malformed."""
    mid = model_id(api, auth, onnx_like(tmp_path / "m.onnx"))
    before = counts(settings), stored_blobs(settings)
    nul = "f" * 31 + "\x00"
    problem(api.post("/v1/jobs", headers=auth, json={"model_id": nul, "spec": SPEC}), 404)
    problem(api.post("/v1/jobs", headers=auth, json={"model_id": mid, "dataset_id": nul, "spec": SPEC}), 404)
    spec = {**SPEC, "calibration": {"dataset_id": nul}}
    problem(api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": spec}), 404)
    spec = {**SPEC, "calibration": {"eval_dataset_id": nul}}
    body = problem(api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": spec}), 422)
    assert "does not exist" in body["detail"]
    key = {**auth, "Idempotency-Key": "k\x00"}
    problem(api.post("/v1/jobs", headers=key, json={"model_id": mid, "spec": SPEC}), 422)
    buf = io.BytesIO()
    np.savez(buf, input=np.zeros((2, 1, 16, 16), np.float32))
    form = {"model_id": nul}
    problem(api.post("/v1/datasets", headers=auth, data=form, files={"file": ("d.npz", buf.getvalue())}), 404)
    for url, name, data in (("/v1/models", "m\x00.onnx", b"\x08\x07" + os.urandom(64)),
                            ("/v1/datasets", "d\x00.npz", buf.getvalue())):  # fmt: skip
        body = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="' + name.encode()
                + b'"\r\n\r\n' + data + b"\r\n--B--\r\n")  # fmt: skip
        headers = {**auth, "Content-Type": "multipart/form-data; boundary=B"}
        assert "file name" in problem(api.post(url, headers=headers, content=body), 400)["detail"]
    assert (counts(settings), stored_blobs(settings)) == before


def test_artifact_head_etag_and_range(
    api: Any, auth: dict[str, str], zoo: dict[str, Path], settings: Settings, tmp_path: Path
) -> None:
    """Artifacts answer HEAD, If-None-Match (304) and one byte Range (206, 416 outside), as download
    managers and caches expect; the bytes are the stored ones (written here as a worker would)."""
    import hashlib

    from app.core.storage import make_store

    mid = model_id(api, auth, zoo["tiny"])
    job = api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": SPEC}).json()
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "a").write_bytes(data)
    make_store(settings).put_file(tmp_path / "a", sha)
    with session_scope(settings.database_url) as s:
        s.execute(sa.update(Job).where(Job.id == job["id"]).values(
            state="succeeded", artifacts={"pruned.onnx": {"sha256": sha, "size": len(data)}}))  # fmt: skip
    url = f"/v1/jobs/{job['id']}/artifacts/pruned.onnx"

    full = api.get(url, headers=auth)
    assert full.status_code == 200 and full.content == data and full.headers["accept-ranges"] == "bytes"
    etag = full.headers["etag"]
    assert etag == f'"{sha}"'
    head = api.head(url, headers=auth)
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(data))
    assert head.headers["etag"] == etag
    assert api.get(url, headers={**auth, "If-None-Match": etag}).status_code == 304
    assert api.get(url, headers={**auth, "If-None-Match": '"other"'}).status_code == 200

    part = api.get(url, headers={**auth, "Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = api.get(url, headers={**auth, "Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.content == data[-500:]
    rest = api.get(url, headers={**auth, "Range": f"bytes={len(data) - 10}-"})
    assert rest.status_code == 206 and rest.content == data[-10:]
    # a resumed download whose copy is stale (If-Range names another version) gets the whole file
    stale = api.get(url, headers={**auth, "Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == data
    bad = problem(api.get(url, headers={**auth, "Range": f"bytes={len(data)}-"}), 416)
    assert "outside" in bad["detail"]
    assert api.get(url, headers={**auth, "Range": "bytes=0-1,5-6"}).content == data  # several: the whole


def test_unknown_query_parameters_are_400(api: Any, auth: dict[str, str]) -> None:
    """A misspelt filter is refused with what the route takes, not ignored (a silently wrong page)."""
    body = problem(api.get("/v1/jobs?page_size=5", headers=auth), 400)
    assert "'page_size'" in body["detail"] and "limit" in body["detail"] and "cursor" in body["detail"]
    assert "'model_id'" in problem(api.get("/v1/models?model_id=x", headers=auth), 400)["detail"]
    assert api.get("/v1/jobs?limit=5", headers=auth).status_code == 200
    assert api.get("/livez").status_code == 200 and problem(api.get("/livez?x=1"), 400)


def test_malformed_json_is_400_and_submit_says_when_to_poll(
    api: Any, auth: dict[str, str], zoo: dict[str, Path]
) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    body = problem(api.post("/v1/jobs", headers=headers, content=b'{"model_id": '), 400)
    assert body["title"] == "Malformed JSON"
    assert problem(api.post("/v1/jobs", headers=auth, json={"model_id": 5}), 422)  # JSON, not a job
    mid = model_id(api, auth, zoo["tiny"])
    r = api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": SPEC})
    assert r.status_code == 202 and int(r.headers["retry-after"]) > 0


def test_a_malformed_id_is_a_sentence_not_a_pattern(api: Any, auth: dict[str, str]) -> None:
    for path, what in (("/v1/jobs/abc", "job"), ("/v1/models/nope/groups", "model"), ("/v1/datasets/x1", "dataset")):
        body = problem(api.get(path, headers=auth), 422)
        assert f"is not a {what} id (32 hex digits, or the 8-4-4-4-12 UUID form)" in body["detail"], body
        assert "^(" not in body["detail"] and "pattern" not in body["detail"]
