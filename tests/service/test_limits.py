"""Bounded inputs at the API: zip bombs and lying .npz headers (422), multipart floods and oversized
job bodies (413, refused before the body is read in full), and the spec's list bounds (422).
Each runs on PostgreSQL+Redis and on SQLite, and must leave no row and no stored byte behind."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.core.config import Settings
from app.core.db.models import Dataset, Job, Model
from app.core.db.session import session_scope
from tests.bombs import MiB, declared_4gib_zip, lying_npz, zeros_bomb, zip_bytes
from tests.service.conftest import make_client, problem

BOUNDARY = "spa-limits-boundary"


def state(settings: Settings) -> tuple[dict[str, int], list[Path]]:
    """Rows per table and every stored file (staging included): a refusal must change neither."""
    with session_scope(settings.database_url) as s:
        rows = {
            cls.__tablename__: s.execute(sa.select(sa.func.count()).select_from(cls)).scalar_one()
            for cls in (Model, Dataset, Job)
        }
    assert settings.storage_dir is not None
    root = settings.storage_dir
    return rows, sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def with_settings(settings: Settings, **overrides: Any) -> Settings:
    return Settings(**{**settings.model_dump(), **overrides})


def one_sentence(detail: str) -> None:
    assert detail and ". " not in detail.rstrip(".") and "Error" not in detail, detail


class Streamed:
    """A request body that counts what the server actually pulled from it."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.sent = chunks, 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.sent += len(chunk)
            yield chunk


def asgi_post(
    settings: Settings, path: str, headers: dict[str, str], body: Streamed
) -> tuple[int, dict[str, Any]]:
    """POST a chunked body (no Content-Length) straight to the ASGI app, one chunk per receive().

    TestClient joins a generator body before the app sees it; this shows what the app reads."""
    from app.api.main import create_app

    app = create_app(settings)
    chunks = iter(body)
    messages: list[dict[str, Any]] = []
    done = False

    async def receive() -> dict[str, Any]:
        nonlocal done
        if done:
            return {"type": "http.disconnect"}
        chunk = next(chunks, None)
        if chunk is None:
            done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("testclient", 50000), "server": ("testserver", 80),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    start = next(m for m in messages if m["type"] == "http.response.start")
    raw = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    ctype = dict(start["headers"]).get(b"content-type", b"").decode()
    assert ctype.startswith("application/problem+json"), (start["status"], raw[:300])
    return start["status"], json.loads(raw)


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n"


def multipart_headers(auth: dict[str, str]) -> dict[str, str]:
    return {**auth, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def placeholder_model(api: Any, auth: dict[str, str]) -> str:
    """A model row (still validating: no worker consumes these queues) to submit jobs against."""
    onnxish = b"\x08\x07" + os.urandom(64)
    r = api.post("/v1/models", headers=auth, files={"file": ("m.onnx", onnxish)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


# ------------------------------------------------------------------------------------- zip bombs


@pytest.mark.parametrize("kind", ["declared-4gib-from-4mib", "deflate-64mib-of-zeros"])
def test_zip_bomb_upload_is_refused_with_default_settings(
    api: Any, auth: dict[str, str], settings: Settings, tmp_path: Path, kind: str
) -> None:
    assert settings.max_unpacked_bytes == 8 * 1024**3 and settings.max_zip_ratio == 100
    if kind.startswith("declared"):
        data = declared_4gib_zip()
        assert len(data) < 4.5 * MiB
    else:
        data = zeros_bomb(tmp_path / "b.zip", 64 * MiB).read_bytes()
    before = state(settings)
    r = api.post("/v1/models", headers=auth, files={"file": ("model.zip", data)})
    body = problem(r, 422)
    assert "compression ratio above the limit of 100" in body["detail"]
    one_sentence(body["detail"])
    assert state(settings) == before


def test_unpacked_limit_is_the_setting(settings: Settings, new_key: Any) -> None:
    small = with_settings(settings, max_unpacked_bytes=MiB)
    auth = new_key("unpacked")
    data = zip_bytes({"model.onnx": b"\x08\x07", "w.bin": os.urandom(2 * MiB)})  # ratio 1
    with make_client(small) as api:
        body = problem(api.post("/v1/models", headers=auth, files={"file": ("m.zip", data)}), 422)
        assert "more than the limit of 1048576 bytes" in body["detail"]
    with make_client(settings) as api:  # the default lets the same archive through
        assert api.post("/v1/models", headers=auth, files={"file": ("m.zip", data)}).status_code == 201


def test_npz_declaring_a_huge_array_is_refused(
    api: Any, auth: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    p = lying_npz(tmp_path / "d.npz", (10**12,))
    assert p.stat().st_size < 1024
    before = state(settings)
    body = problem(api.post("/v1/datasets", headers=auth, files={"file": ("d.npz", p.read_bytes())}), 422)
    assert "declares 4000000000000 bytes" in body["detail"]
    one_sentence(body["detail"])
    short = lying_npz(tmp_path / "e.npz", (999,)).read_bytes()
    body = problem(api.post("/v1/datasets", headers=auth, files={"file": ("e.npz", short)}), 422)
    assert "but its member holds 16" in body["detail"]
    assert state(settings) == before


# --------------------------------------------------------------------------------- form floods


def _fields(n: int, size: int) -> Iterator[bytes]:
    value = b"v" * size
    for i in range(n):
        yield part(f"f{i}", value)


def _skipped_files(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield part("other", b"0123456789", filename=f"x{i}.bin")


def _big_skipped_file(size: int) -> Iterator[bytes]:
    yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="other"; filename="big.bin"\r\n\r\n'.encode()
    chunk = bytes(64 * 1024)
    for _ in range(size // len(chunk)):
        yield chunk


FLOODS = {
    # name: (body, expected words in the detail)
    "20000-fields-of-60kb": (lambda: _fields(20_000, 60_000), "form's fields and part headers exceed"),
    "20000-tiny-fields": (lambda: _fields(20_000, 1), "more than 16 fields"),
    "20000-skipped-files": (lambda: _skipped_files(20_000), "more than 20 parts"),
    "100mb-skipped-file": (lambda: _big_skipped_file(100 * MiB), "upload larger than the limit"),
}


@pytest.mark.parametrize("flood", sorted(FLOODS))
def test_multipart_flood_is_cut_off_early(settings: Settings, auth: dict[str, str], flood: str) -> None:
    small = with_settings(settings, max_upload_bytes=1_000_000)
    make_body, words = FLOODS[flood]
    body = Streamed(make_body())
    before = state(small)
    status, problem_body = asgi_post(small, "/v1/models", multipart_headers(auth), body)
    assert status == 413 and words in problem_body["detail"], problem_body
    one_sentence(problem_body["detail"])
    # Read no more than the limit plus the form's overhead (and one chunk): not the whole flood.
    assert body.sent < 1_000_000 + 400 * 1024, body.sent
    assert state(small) == before


def test_forms_within_the_limits_still_work(api: Any, auth: dict[str, str], settings: Settings) -> None:
    onnxish = b"\x08\x07" + os.urandom(64)
    extra = {f"note{i}": "x" * 1000 for i in range(settings.max_form_fields)}
    r = api.post("/v1/models", headers=auth, data=extra, files={"file": ("m.onnx", onnxish)})
    assert r.status_code == 201, r.text
    extra["one_more"] = "x"
    body = problem(api.post("/v1/models", headers=auth, data=extra, files={"file": ("n.onnx", onnxish)}), 413)
    assert "more than 16 fields" in body["detail"]


# ------------------------------------------------------------------------------------ job bodies


def test_oversized_job_body_is_refused_before_parsing(
    api: Any, auth: dict[str, str], settings: Settings
) -> None:
    mid = placeholder_model(api, auth)
    before = state(settings)
    huge = {"model_id": mid, "spec": {"target": {"flops": 0.5}, "ignore": ["p" * 500] * 20_000}}  # 10 MB
    body = problem(api.post("/v1/jobs", headers=auth, json=huge), 413)
    one_sentence(body["detail"])
    # Chunked, no Content-Length: cut off once the cap has passed, the rest never read.
    raw = json.dumps(huge).encode()
    stream = Streamed(raw[i : i + 16 * 1024] for i in range(0, len(raw), 16 * 1024))
    status, _ = asgi_post(settings, "/v1/jobs", {**auth, "Content-Type": "application/json"}, stream)
    assert status == 413
    assert stream.sent <= settings.max_spec_bytes + 4 * 1024 + 16 * 1024, stream.sent
    assert state(settings) == before
    # Near the cap but under it: an ordinary (long) spec is accepted and listed.
    patterns = [f"layer{i}.*" + "x" * 200 for i in range(256)]
    ok = {"model_id": mid, "spec": {"target": {"flops": 0.5}, "ignore": patterns}}
    assert 50_000 < len(json.dumps(ok)) < settings.max_spec_bytes
    r = api.post("/v1/jobs", headers=auth, json=ok)
    assert r.status_code == 202, r.text
    assert len(r.json()["spec"]["ignore"]) == 256


@pytest.mark.parametrize(
    "spec",
    [
        {"ignore": ["conv*"] * 257},
        {"ignore": ["x" * 513]},
        {"input_shapes": {f"in{i}": [1, 3] for i in range(65)}},
        {"input_shapes": {"x": [1] * 9}},
    ],
    ids=["257-patterns", "long-pattern", "65-inputs", "9-dims"],
)
def test_spec_lists_are_bounded(
    api: Any, auth: dict[str, str], settings: Settings, spec: dict[str, Any]
) -> None:
    mid = placeholder_model(api, auth)
    before = state(settings)
    r = api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": {"target": {"flops": 0.5}, **spec}})
    body = problem(r, 422)
    assert body["errors"] and "spec" in body["errors"][0]["loc"]
    assert state(settings) == before


def test_openapi_announces_413_on_jobs(api: Any) -> None:
    doc = api.get("/openapi.json").json()
    assert "413" in doc["paths"]["/v1/jobs"]["post"]["responses"]
    schema = doc["components"]["schemas"]["PruneSpec"]["properties"]
    assert schema["ignore"]["maxItems"] == 256 and schema["input_shapes"]["maxProperties"] == 64
