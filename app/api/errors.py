"""RFC 9457 problem details: every error the API returns is ``application/problem+json``."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.db.session import DB_AWAY

PROBLEM_MEDIA_TYPE = "application/problem+json"
DB_RETRY_AFTER_S = 5
log = logging.getLogger("spa.api")


class Problem(BaseModel):
    """The error body (RFC 9457). ``errors`` lists field-level problems of a 422."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
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
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.type = type_
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
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
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
            type_=exc.type,
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
            request, 503, detail="the database is unavailable; retry shortly",
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
