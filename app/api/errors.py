"""RFC 9457 problem details: every error the API returns is ``application/problem+json``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.db.session import DB_AWAY

PROBLEM_MEDIA_TYPE = "application/problem+json"
DB_RETRY_AFTER_S = 5
PROBLEMS_PATH = "/problems"
log = logging.getLogger("spa.api")


@dataclass(frozen=True)
class ProblemKind:
    """One kind of error: its ``type`` is ``/problems/<slug>``, a page that says what it means
    (app/api/routes/problem_pages.py; the same list is docs/errors.md)."""

    slug: str
    status: int
    title: str  # the title it is raised with; a raise site with this status and title gets this kind
    when: str
    action: str
    default: bool = False  # the kind of an error of this status that names no other
    explicit: bool = False  # only by ``kind=``: its title is its status's generic one


KINDS: dict[str, ProblemKind] = {
    k.slug: k
    for k in (
        ProblemKind("bad-request", 400, "Bad Request", "The request cannot be read: a malformed multipart "
                    "body, control characters in an upload's file name.",
                    "Fix the request as `detail` says; sending it again unchanged fails again.", default=True),
        ProblemKind("malformed-json", 400, "Malformed JSON", "The body of a JSON route is not JSON "
                    "(or not UTF-8).", "Send a valid JSON document with `Content-Type: application/json`."),
        ProblemKind("unknown-query-parameter", 400, "Unknown query parameter", "The query names a parameter "
                    "the route does not take (a misspelt filter would otherwise be silently ignored).",
                    "Use the parameters `detail` lists for this route."),
        ProblemKind("unauthorized", 401, "Unauthorized", "No API key was sent, or the key is unknown or "
                    "revoked.", "Send `Authorization: Bearer <api key>`; an operator creates keys with "
                    "`spa admin create-key NAME`.", default=True),
        ProblemKind("forbidden", 403, "Forbidden", "The server refuses this on purpose: PyTorch (`.pt2`) "
                    "uploads are disabled, or a server without authentication was called from another "
                    "machine.", "Ask the operator (`detail` says which setting refuses it).", default=True),
        ProblemKind("not-found", 404, "Not Found", "No such path, or no model, dataset, job or artifact "
                    "with this id for your key (another tenant's ids are not found either).",
                    "Check the id and that you use the key that created the resource.", default=True),
        ProblemKind("method-not-allowed", 405, "Method Not Allowed", "The path exists but does not take "
                    "this method.", "Use one of the methods in the `Allow` header.", default=True),
        ProblemKind("conflict", 409, "Conflict", "The resource's state does not allow it now: the model is "
                    "still being analysed or is invalid, the job has already finished.",
                    "Wait and retry when there is a `Retry-After` header; otherwise the state is final "
                    "(`detail` says which).", default=True),
        ProblemKind("too-large", 413, "Request too large", "The body, the upload or the form is larger "
                    "than the server's limit (`detail` gives it).", "Send less, or ask the operator to "
                    "raise the limit (`SPA_MAX_UPLOAD_BYTES`, `SPA_MAX_SPEC_BYTES`, `SPA_MAX_FORM_FIELDS`).",
                    default=True),
        ProblemKind("unsupported-media-type", 415, "Unsupported Media Type", "The upload is not a form "
                    "with a file part, or its file type is not one the route takes.",
                    "Send multipart/form-data with a `file` part: `.onnx`, `.zip` or `.pt2` for models, "
                    "`.npz` for datasets.", default=True),
        ProblemKind("range-not-satisfiable", 416, "Range Not Satisfiable", "The `Range` of an artifact "
                    "download lies outside the file.", "Ask for bytes within the size that "
                    "`Content-Range` gives, or download without `Range`.", default=True),
        ProblemKind("validation", 422, "Unprocessable Entity", "The request is well-formed but a value is "
                    "invalid: a field of the body, a parameter, a cursor, an uploaded file that is empty "
                    "or not the format it claims.", "Fix the fields that `errors` (or `detail`) names.",
                    default=True),
        ProblemKind("invalid-model", 422, "Invalid model", "The job names a model that failed analysis.",
                    "Upload a valid model; its `reason` says what was wrong."),
        ProblemKind("invalid-dataset", 422, "Invalid dataset", "The dataset cannot be read, does not fit "
                    "the model's inputs, or leaves no samples for calibration or evaluation.",
                    "Send an `.npz` with one array per model input, enough samples for the split."),
        ProblemKind("unsafe-archive", 422, "Unsafe archive", "A `.zip` upload has a member that would land "
                    "outside its folder, a link, an encrypted member, too many members, or unpacks too large "
                    "or too compressed (a zip bomb).", "Zip the model and its external data files plainly: "
                    "relative paths, no links, no encryption."),
        ProblemKind("idempotency-key-reused", 422, "Idempotency key reused", "The `Idempotency-Key` was "
                    "already used with a different request body.", "Use a new key for a new request."),
        ProblemKind("internal-error", 500, "Internal Server Error", "A bug: the server failed unexpectedly.",
                    "Retry once; if it persists, report it with the time (the server log has the "
                    "traceback).", default=True),
        ProblemKind("unavailable", 503, "Service Unavailable", "A service the request needs is away: the "
                    "task broker did not take the job or the model's analysis.",
                    "Retry shortly; nothing was created.", default=True),
        ProblemKind("database-unavailable", 503, "Service Unavailable", "The database is away (restart, "
                    "failover, network) or locked.", "Retry after the `Retry-After` seconds.", explicit=True),
        ProblemKind("not-ready", 503, "Service Unavailable", "`/readyz`: the database, the broker or the "
                    "storage is not usable (`checks` says which).", "Operators: fix what `checks` names; "
                    "clients: retry later.", explicit=True),
    )
}
_BY_TITLE = {(k.status, k.title): k for k in KINDS.values() if not (k.default or k.explicit)}
_BY_STATUS = {k.status: k for k in KINDS.values() if k.default}


def kind_of(status: int, title: str | None = None, kind: str | None = None) -> ProblemKind | None:
    """The kind of an error: named explicitly, else by its status and title, else its status's
    default. None for a status no kind covers (its type is then ``about:blank``)."""
    if kind is not None:
        return KINDS[kind]
    return _BY_TITLE.get((status, title or "")) or _BY_STATUS.get(status)


def type_uri(request: Request, kind: ProblemKind | None) -> str:
    # Relative reference (RFC 9457 3.1.1), resolved against the request URI: the API's own page,
    # under the prefix it is served at.
    if kind is None:
        return "about:blank"
    return f"{request.scope.get('root_path', '')}{PROBLEMS_PATH}/{kind.slug}"


class Problem(BaseModel):
    """The error body (RFC 9457). ``errors`` lists field-level problems of a 422."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        "about:blank", description="what kind of error: a page at this URI (relative to the API) explains it"
    )
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class ProblemError(Exception):
    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        title: str | None = None,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        if kind is not None and kind not in KINDS:  # a typo would silently give the wrong type
            raise ValueError(f"unknown problem kind {kind!r}")
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.kind = kind
        self.headers = headers
        self.extra = extra


def not_found(what: str) -> ProblemError:
    # Same answer for "does not exist" and "belongs to someone else": ids leak nothing.
    return ProblemError(404, f"{what} not found")


def problem_response(
    request: Request,
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    title = title or HTTPStatus(status).phrase
    body: dict[str, Any] = {
        "type": type_uri(request, kind_of(status, title, kind)),
        "title": title,
        "status": status,
        "instance": request.url.path,
    }
    if detail is not None:
        body["detail"] = detail
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _jsonable_errors(errors: Any) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        item = {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        field = str(item["loc"][-1]) if item["loc"] else ""
        if item["type"] == "string_pattern_mismatch" and field.endswith("_id"):
            # an id that cannot be one: say what an id looks like, not the regular expression
            what = field.removesuffix("_id").replace("_", " ")
            item["msg"] = f"{str(e.get('input', ''))[:64]!r} is not a {what} id (32 hex digits, or the 8-4-4-4-12 UUID form)"
        out.append(item)
    return out


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            request,
            exc.status,
            title=exc.title,
            detail=exc.detail,
            kind=exc.kind,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem_response(
            request, exc.status_code, detail=detail, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _jsonable_errors(exc.errors())
        if any(e["type"] == "json_invalid" for e in errors):  # not JSON at all: a malformed request
            where = errors[0]["msg"] if errors else ""
            return problem_response(request, 400, title="Malformed JSON", detail=f"the body is not valid JSON ({where})")
        first = errors[0] if errors else None
        detail = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else "invalid request"
        return problem_response(request, 422, detail=detail, errors=errors)

    # The database away (restart, failover, network) or locked is an outage, not a bug: 503 with
    # Retry-After, so that clients wait and retry instead of giving up on a 500.
    async def _database_away(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            request, 503, detail="the database is unavailable; retry shortly", kind="database-unavailable",
            headers={"Retry-After": str(DB_RETRY_AFTER_S)},
        )

    for away in DB_AWAY:
        app.add_exception_handler(away, _database_away)

    @app.exception_handler(sa_exc.DBAPIError)
    async def _dbapi(request: Request, exc: sa_exc.DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:  # the connection dropped under the statement
            return await _database_away(request, exc)
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, detail="internal error; see the server log")


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can answer."""
    return {
        # No "model": FastAPI would then also announce application/json, which errors never are.
        s: {
            "description": HTTPStatus(s).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for s in statuses
    }
