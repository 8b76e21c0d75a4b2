"""Every kind of error has its own problem ``type`` (RFC 9457), a page at that URI says what it
means, and docs/errors.md lists the same kinds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from app.api.errors import KINDS, ProblemError
from app.core.config import Settings
from tests.service.conftest import ROOT, make_client, problem


def test_each_kind_of_error_has_its_own_type(settings: Settings, auth: dict[str, str]) -> None:
    seen: dict[str, str] = {}
    with make_client(settings) as api:

        def kind(response: Any, status: int) -> str:
            body = problem(response, status)
            seen[body["type"]] = f"{status} {response.request.method} {response.request.url.path}"
            return body["type"]

        assert kind(api.get("/v1/jobs/" + "a" * 32, headers=auth), 404) == "/problems/not-found"
        assert kind(api.get("/no/such/path"), 404) == "/problems/not-found"
        assert kind(api.get("/v1/jobs"), 401) == "/problems/unauthorized"
        assert kind(api.post("/v1/jobs", headers=auth, json={"model_id": 5}), 422) == "/problems/validation"
        assert kind(api.get("/v1/jobs", params={"modelid": "x"}, headers=auth), 400) == (
            "/problems/unknown-query-parameter"
        )
        malformed = api.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"}, content=b"{")
        assert kind(malformed, 400) == "/problems/malformed-json"
        too_big = b'{"x": "' + b"a" * (settings.max_spec_bytes + 64 * 1024) + b'"}'
        assert kind(api.post("/v1/jobs", headers=auth, content=too_big), 413) == "/problems/too-large"
        assert kind(api.put("/livez"), 405) == "/problems/method-not-allowed"
        assert kind(api.post("/v1/models", headers=auth, files={"file": ("m.txt", b"x")}), 415) == (
            "/problems/unsupported-media-type"
        )
        # no worker consumes these queues: the model stays "validating", its groups are a conflict
        created = api.post("/v1/models", headers=auth, files={"file": ("m.onnx", b"\x08\x07" + os.urandom(64))})
        assert created.status_code in (200, 201), created.text
        groups = api.get(f"/v1/models/{created.json()['id']}/groups", headers=auth)
        assert kind(groups, 409) == "/problems/conflict"
    assert len(seen) == 9, seen  # nine kinds, nine types


def test_outages_have_their_own_types(settings: Settings, auth: dict[str, str]) -> None:
    no_broker = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with make_client(no_broker) as api:
        body = problem(api.get("/readyz"), 503)
        assert body["type"] == "/problems/not-ready" and body["checks"]["broker"].startswith("error")
    no_db = settings.model_copy(update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/none"})
    with make_client(no_db) as api:
        r = api.get("/v1/jobs", headers=auth)
        assert problem(r, 503)["type"] == "/problems/database-unavailable" and r.headers["retry-after"]


def test_every_type_is_a_page_anyone_can_read(api: Any) -> None:
    index = api.get("/problems")  # no key, with auth on
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    for slug, kind in KINDS.items():
        r = api.get(f"/problems/{slug}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), slug
        assert f'id="{slug}"' in r.text and str(kind.status) in r.text
        assert f'href="/problems/{slug}"' in index.text
    assert problem(api.get("/problems/no-such-kind"), 404)["type"] == "/problems/not-found"
    doc = api.get("/openapi.json").json()
    assert "/problems/{kind}" in doc["paths"] and "security" not in doc["paths"]["/problems/{kind}"]["get"]


def test_the_docs_list_every_kind() -> None:
    text = (Path(ROOT) / "docs" / "errors.md").read_text()
    for slug, kind in KINDS.items():
        line = next((ln for ln in text.splitlines() if f"`/problems/{slug}`" in ln), None)
        assert line is not None, slug
        assert f"| {kind.status} |" in line, line


def test_a_misspelt_kind_is_refused_where_it_is_raised() -> None:
    assert ProblemError(409, "x", kind="conflict").kind == "conflict"
    with pytest.raises(ValueError):
        ProblemError(409, "x", kind="conflikt")
