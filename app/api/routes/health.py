"""/livez, /readyz (DB, broker, storage), /metrics (Prometheus)."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import SessionDep, SettingsDep, bearer_scheme, get_owner
from app.api.errors import KINDS, PROBLEM_MEDIA_TYPE, problems, type_uri
from app.api.routes import AllowRoute
from app.core import workers

router = APIRouter(tags=["health"], route_class=AllowRoute)


@router.get("/livez", summary="Liveness: the process answers")
def livez() -> dict[str, str]:
    return {"status": "ok"}


def _check(fn: Any) -> str:
    try:
        fn()
        return "ok"
    except Exception as e:
        return f"error: {' '.join(str(e).split())[:200] or 'unavailable'}"


@router.get(
    "/readyz",
    summary="Readiness: database, broker and storage are usable; live workers per queue",
    responses={200: {"description": "ready"}, **problems(503)},
)
def readyz(request: Request) -> JSONResponse:
    state = request.app.state

    def db() -> None:
        with state.sessionmaker() as s:
            s.execute(sa.text("SELECT 1"))

    def broker() -> None:
        with state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)

    checks = {"database": _check(db), "broker": _check(broker), "storage": _check(state.store.check)}
    ok = all(v == "ok" for v in checks.values())
    queues = _queues(state) if checks["database"] == "ok" else None
    if ok:
        return JSONResponse({"status": "ready", "checks": checks, "queues": queues})
    body = {
        "type": type_uri(request, KINDS["not-ready"]),
        "title": "Service Unavailable",
        "status": 503,
        "detail": "not ready",
        "checks": checks,
        "queues": queues,
    }
    return JSONResponse(body, status_code=503, media_type=PROBLEM_MEDIA_TYPE)


def _queues(state: Any) -> dict[str, dict[str, Any]] | None:
    """Per queue: live workers consuming it (their rows in ``workers``). Information, not a
    readiness condition: the API accepts jobs for a queue whose worker is starting or restarting
    (the job says so), and a deployment without GPU workers is still ready for CPU jobs."""
    settings = state.settings
    names = [settings.queue_cpu, settings.queue_gpu]
    try:
        with state.sessionmaker() as s:
            live = workers.live_by_queue(s, settings.heartbeat_stale_s, names)
    except Exception:
        return None
    return {q: {"workers": n, "consumed": n > 0} for q, n in live.items()}


def _metrics_access(
    request: Request, settings: SettingsDep, session: SessionDep,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> None:
    """Job counts and traffic are operator information: behind an API key when auth is on, unless
    the operator serves /metrics on a private network (SPA_METRICS_PUBLIC)."""
    if not settings.metrics_public:
        get_owner(request, settings, session)


@router.get(
    "/metrics",
    summary="Prometheus metrics (an API key when auth is on, unless SPA_METRICS_PUBLIC)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **problems(401, 403)},
    dependencies=[Depends(_metrics_access)],
)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
