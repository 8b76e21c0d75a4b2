"""The FastAPI application: ``uvicorn app.api.main:app`` (settings from SPA_* variables).

Never imports torch, onnx or the worker: it validates specs with the pydantic PruneSpec, stores
uploads as opaque bytes and sends tasks by name (``app.core.queue``).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.bodylimit import SPEC_SLACK, BodyLimit
from app.api.errors import Problem, install_handlers
from app.api.prometheus import Metrics
from app.api.routes import datasets, health, jobs, models
from app.api.web import pages
from app.core.config import Settings, get_settings
from app.core.db.aio import AsyncReader
from app.core.db.session import get_sessionmaker
from app.core.queue import make_celery
from app.core.storage import make_store
from app.core.sweeper import sweeper as make_sweeper

log = logging.getLogger("spa.api")


def _freeze_startup_objects() -> None:
    """What is alive once the app starts (modules, routes, schemas: ~130,000 objects) lives as long
    as the process: out of the collector's sight, a full collection takes well under a millisecond
    instead of ~80 ms, a pause that every request in flight waited out (the polls' 99th percentile,
    bench/api_load.py). Once per process (a test session starts many apps)."""
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _freeze_startup_objects()
        # jobs of a worker that died are recovered even when no worker is left to notice
        sweeper = make_sweeper(settings, app.state.celery, "spa-api-sweeper") if settings.api_sweeps else None
        if sweeper is not None:
            sweeper.start()
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.stop_event.set()
            if app.state.reader is not None:
                await app.state.reader.close()

    app = FastAPI(
        lifespan=lifespan,
        title="SPA service",
        version="1.0.0",
        description="Structured pruning of neural networks: upload a model, submit a pruning spec, "
        "poll the job, download the pruned model. Errors are RFC 9457 `application/problem+json`.",
    )
    app.state.settings = settings
    app.state.sessionmaker = get_sessionmaker(settings.database_url)
    app.state.reader = AsyncReader.for_url(settings.database_url)  # PostgreSQL only: the poll
    app.state.store = make_store(settings)
    app.state.celery = make_celery(settings)
    app.state.metrics = Metrics(app.state.sessionmaker, settings)
    # Before the metrics middleware, which then wraps it: its 413s are counted too.
    app.add_middleware(BodyLimit, max_bytes=settings.max_spec_bytes + SPEC_SLACK)
    app.state.metrics.install(app)
    install_handlers(app)
    for module in (models, datasets, jobs, health):
        app.include_router(module.router)
    app.include_router(pages.router)
    _add_problem_schema(app)
    return app


def _add_problem_schema(app: FastAPI) -> None:
    """Routes reference #/components/schemas/Problem; make sure it is in the document."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = Problem.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


app = create_app()
