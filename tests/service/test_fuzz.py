"""Property-based fuzzing of the whole API from its own OpenAPI document (schemathesis + hypothesis).

In-process (ASGI), on PostgreSQL+Redis and on SQLite like the other service tests. For every
operation: no 5xx; every 4xx is RFC 9457 ``application/problem+json``; every answer is one the
document promises (status code, content type, body schema, headers, ``Allow`` on a 405); input the
document calls valid is accepted and input it calls invalid is refused. Without a key, every
operation that declares one is a problem+json 401. Deterministic: a fixed seed, derandomized hypothesis, a bounded
number of cases per operation.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.checks import positive_data_acceptance
from schemathesis.pytest.lazy import get_all_tests
from schemathesis.schemas import BaseSchema

from app.api.main import create_app
from app.core.config import Settings
from app.core.db.models import Job
from app.core.db.session import session_scope
from app.core.storage import make_store
from tests.service.conftest import make_client

SEED = 20240917
# Cases per operation in the fuzzing phase; the examples and coverage phases (boundary values,
# wrong types, missing and unexpected parameters, undeclared methods) add their own fixed set.
# SPA_TEST_FUZZ_EXAMPLES=500 for a deeper run by hand (minutes).
MAX_EXAMPLES = int(os.environ.get("SPA_TEST_FUZZ_EXAMPLES", "100"))
UNAUTH_EXAMPLES = 5
ID_CHARS = frozenset("0123456789abcdef")
# The uploads' document can say "a multipart form with a file part", not what makes the file a model
# or an .npz (its name's suffix, its bytes): a schema-valid form is rightly refused (415/422), so
# "schema-valid input is accepted" is not checked on them. Every other check is, bodies included.
UPLOADS = frozenset({"POST /v1/models", "POST /v1/datasets"})
Stats = dict[str, Counter[int]]


def _config(auth: dict[str, str] | None) -> schemathesis.Config:
    # The key as the document's security scheme: schemathesis then also sends requests without it
    # and with a wrong one wherever the key got a 2xx, and expects them refused.
    token = auth["Authorization"].split(" ", 1)[1] if auth else None
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            **({"auth": {"openapi": {"HTTPBearer": {"bearer": token}}}} if token else {}),
            "generation": {"deterministic": True, "database": "none"},
            # Stateful sequences cost minutes; real ids are planted in generated cases instead.
            "phases": {"stateful": {"enabled": False}},
        }
    )


def _hypothesis(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


def problem_json(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx/5xx is application/problem+json with the RFC 9457 members this API promises."""
    if response.status_code < 400:
        return None
    ctype = response.headers.get("content-type", [""])[0]
    assert ctype.startswith("application/problem+json"), (response.status_code, ctype)
    if case.method.upper() == "HEAD":  # the same headers as GET, and never a body
        assert not response.content, response.content[:100]
        return True
    body = response.json()
    assert isinstance(body, dict), body
    assert body.get("status") == response.status_code, body
    assert isinstance(body.get("title"), str) and body["title"], body
    assert isinstance(body.get("type"), str) and body["type"], body
    return True


def titled_422(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A schema-valid job may still be refused for what no schema can know (a dataset that does not
    fit the model, an eval dataset that is not there): those 422s carry their own title. The generic
    'Unprocessable Entity' is request validation: the document promised what the API refuses."""
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return None
    if response.status_code == 422:
        assert response.json()["title"] != "Unprocessable Entity", response.json()
    return True


# -- real rows, so that operations on ids reach their 200 paths too -----------------------------


def _created(response: Any) -> dict[str, Any]:
    assert response.status_code in (201, 202), response.text
    return response.json()


def _real_rows(settings: Settings, auth: dict[str, str], tmp: Path) -> dict[str, list[str]]:
    """A model (never validated: no worker consumes these queues), a dataset, a queued job and a
    succeeded one with artifacts (written as a worker would: blobs in the store, names on the row)."""
    with make_client(settings) as api:
        onnx = b"\x08\x07" + os.urandom(256)  # starts like a ModelProto: all the API checks
        model = _created(api.post("/v1/models", headers=auth, files={"file": ("m.onnx", onnx)}))
        buf = io.BytesIO()
        np.savez(buf, input=np.zeros((2, 1, 4, 4), np.float32))
        dataset = _created(api.post("/v1/datasets", headers=auth, files={"file": ("d.npz", buf.getvalue())}))
        jobs = [
            _created(api.post("/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": spec}))
            for spec in ({"target": {"channels": 0.3}}, {"target": {"flops": 0.5}})
        ]
    store = make_store(settings)
    artifacts = {}
    files = {"pruned.onnx": b"\x08\x07pruned", "report.json": b'{"ok": true}', "report.html": b"<p>"}
    for name, data in files.items():
        (tmp / name).write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        store.put_file(tmp / name, sha)
        artifacts[name] = {"sha256": sha, "size": len(data)}
    with session_scope(settings.database_url) as s:
        done = sa.update(Job).where(Job.id == jobs[1]["id"]).values(state="succeeded", artifacts=artifacts)
        s.execute(done)
    return {
        "model_id": [model["id"]],
        "dataset_id": [dataset["id"]],
        "job_id": [jobs[0]["id"], jobs[1]["id"]],  # the second one has the artifacts
        "name": sorted(artifacts),
    }


# An id no row can have and PostgreSQL cannot even compare (a NUL in a text parameter): random text
# hardly ever holds one, so it is planted too.
NUL_ID = "f" * 31 + "\x00"


def _plant(case: Case, real: dict[str, list[str]]) -> None:
    """Valid generated ids become, by the generated value (so the run stays deterministic), a real
    one (half of them) or, in job bodies, NUL_ID (a quarter). Invalid ones stay: negative cases."""
    if case.operation.label == "POST /v1/jobs" and isinstance(case.body, dict):
        # the model and datasets a job names, so that jobs reach the database
        spec = case.body.get("spec")
        calibration = spec.get("calibration") if isinstance(spec, dict) else None
        for holder, key, kind in (
            (case.body, "model_id", "model_id"),
            (case.body, "dataset_id", "dataset_id"),
            (calibration, "dataset_id", "dataset_id"),
            (calibration, "eval_dataset_id", "dataset_id"),
        ):
            value = holder.get(key) if isinstance(holder, dict) else None
            if isinstance(value, str) and 1 <= len(value) <= 64 and len(value) % 2 == 0:
                holder[key] = real[kind][0]  # type: ignore[index]
            elif isinstance(value, str) and 1 <= len(value) <= 64 and len(value) % 4 == 1:
                holder[key] = NUL_ID  # type: ignore[index]
    # not into DELETEs: they would remove the rows the other operations' success paths are planted with
    params = (case.path_parameters or {}) if case.method.upper() != "DELETE" else {}
    for key, value in list(params.items()):
        is_id = isinstance(value, str) and len(value) == 32 and set(value) <= ID_CHARS
        if key in real and key != "name" and is_id and int(value[0], 16) % 2 == 0:
            params[key] = real[key][int(value[1], 16) % len(real[key])]
    name = params.get("name")
    if params.get("job_id") == real["job_id"][1] and isinstance(name, str) and name[:1].isalnum():
        params["name"] = real["name"][len(name) % len(real["name"])]


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def fuzz_settings(settings: Settings) -> Settings:
    # No sweeper: schemathesis' ASGI client keeps the app's lifespan running past the test.
    return Settings(**{**settings.model_dump(), "api_sweeps": False})


@pytest.fixture
def real_ids(fuzz_settings: Settings, auth: dict[str, str], tmp_path: Path) -> dict[str, list[str]]:
    return _real_rows(fuzz_settings, auth, tmp_path)


@pytest.fixture
def app(fuzz_settings: Settings) -> Iterator[Any]:
    yield create_app(fuzz_settings)
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()


def _run(schema: BaseSchema, max_examples: int, test_func: Callable[..., None], **kwargs: Any) -> Stats:
    """Every operation's hypothesis test (schemathesis builds them; its own pytest wrapper does not
    run on pytest 9, which has no ``Function._nodeid``); all operations' findings reported together."""
    stats: Stats = {}
    failures: list[str] = []
    for result in get_all_tests(
        schema=schema, test_func=test_func, settings=_hypothesis(max_examples), given_kwargs=None
    ):
        operation, test = result.ok()
        stats[operation.label] = Counter()
        try:
            test(stats=stats[operation.label], **kwargs)
        except (Exception, BaseExceptionGroup) as e:
            failures.append(f"{operation.label}: {type(e).__name__}: {e}")
    assert not failures, "\n\n".join(failures)
    return stats


# -- the tests ------------------------------------------------------------------------------------


def _check_authenticated(case: Case, stats: Counter[int], real: dict[str, list[str]]) -> None:
    _plant(case, real)
    label = case.operation.label
    response = case.call_and_validate(
        additional_checks=[problem_json, *([titled_422] if label == "POST /v1/jobs" else [])],
        # POST /v1/jobs: titled_422 in its place (the job's data is checked against the model)
        excluded_checks=[positive_data_acceptance] if label in UPLOADS or label == "POST /v1/jobs" else [],
    )
    stats[response.status_code] += 1


def test_fuzz_api(app: Any, auth: dict[str, str], real_ids: dict[str, list[str]]) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=_config(auth))
    stats = _run(schema, MAX_EXAMPLES, _check_authenticated, real=real_ids)
    # Each success path once on purpose as well (all checks on): how many generated cases the planted
    # ids turn into hits depends on what hypothesis draws, which a loaded machine can change.
    job = real_ids["job_id"][1]
    for path, params in (
        ("/v1/models/{model_id}", {"model_id": real_ids["model_id"][0]}),
        ("/v1/datasets/{dataset_id}", {"dataset_id": real_ids["dataset_id"][0]}),
        ("/v1/jobs/{job_id}", {"job_id": job}),
        ("/v1/jobs/{job_id}/events", {"job_id": job}),
        *(("/v1/jobs/{job_id}/artifacts/{name}", {"job_id": job, "name": n}) for n in real_ids["name"]),
    ):
        # (an explicit case gets no auth from the config: the key goes in as a header)
        response = schema[path]["GET"].Case(path_parameters=params, headers=dict(auth)).call_and_validate(
            additional_checks=[problem_json]
        )
        stats[f"GET {path}"][response.status_code] += 1
    submit = schema["/v1/jobs"]["POST"].Case(
        body={"model_id": real_ids["model_id"][0], "spec": {"target": {"channels": 0.2}}},
        headers=dict(auth), media_type="application/json",
    ).call_and_validate(additional_checks=[problem_json])
    stats["POST /v1/jobs"][submit.status_code] += 1
    # a DELETE's success path, last: the finished job
    gone = schema["/v1/jobs/{job_id}"]["DELETE"].Case(
        path_parameters={"job_id": job}, headers=dict(auth)
    ).call_and_validate(additional_checks=[problem_json])
    assert gone.status_code == 204, gone.text
    # Not vacuous: every operation ran, and the planted ids reached the success paths.
    assert len(stats) >= 15, sorted(stats)
    for label, statuses in stats.items():
        assert statuses.total() >= 10, (label, statuses)
    for label in ("GET /v1/models/{model_id}", "GET /v1/datasets/{dataset_id}", "GET /v1/jobs/{job_id}",
                  "GET /v1/jobs/{job_id}/events", "GET /v1/jobs/{job_id}/artifacts/{name}"):  # fmt: skip
        assert stats[label][200], (label, stats[label])
    assert stats["POST /v1/jobs"][202], stats["POST /v1/jobs"]


def _secured(case: Case) -> bool:
    return bool(case.operation.definition.raw.get("security"))


def _check_unauthenticated(case: Case, stats: Counter[int]) -> None:
    response = case.call_and_validate(additional_checks=[problem_json])
    stats[response.status_code] += 1
    # (an undeclared method is a 405 from the router, before any route runs)
    if _secured(case) and response.request.method == case.operation.method.upper():
        # 401 before anything else, but for a job body that cannot be read at all (400: not UTF-8,
        # 422: not JSON, 413: too large): that is refused while the request is parsed.
        early = (400, 413, 422) if case.operation.label == "POST /v1/jobs" else ()
        assert response.status_code in (401, *early), (response.status_code, response.request.url)
        if response.status_code == 401:
            assert response.headers["www-authenticate"][0].startswith("Bearer")


def test_fuzz_api_without_a_key(app: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=_config(None))
    stats = _run(schema, UNAUTH_EXAMPLES, _check_unauthenticated)
    secured = [op.ok().label for op in schema.get_all_operations() if op.ok().definition.raw.get("security")]
    assert len(secured) >= 13, secured  # every /v1 operation declares the key
    for label in secured:
        assert stats[label][401], (label, stats[label])
