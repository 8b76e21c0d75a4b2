"""The FastAPI application: ``uvicorn app.api.main:app`` (settings from SPA_* variables).

Never imports torch, onnx or the worker: it validates specs with the pydantic PruneSpec, stores
uploads as opaque bytes and sends tasks by name (``app.core.queue``).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.api.bodylimit import SPEC_SLACK, BodyLimit
from app.api.errors import Problem, install_handlers
from app.api.prometheus import Metrics
from app.api.routes import datasets, health, jobs, models, problem_pages
from app.api.web import pages
from app.core.config import Settings, get_settings
from app.core.db.aio import AsyncReader
from app.core.db.session import get_sessionmaker
from app.core.queue import make_celery
from app.core.storage import make_store
from app.core.sweeper import sweeper as make_sweeper

log = logging.getLogger("spa.api")
DOCS_ASSETS = "/docs-assets"


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
        "poll the job, download the pruned model. Errors are RFC 9457 `application/problem+json`; "
        "each error's `type` is a page under `/problems` that says what it means.",
        docs_url=None,  # FastAPI's own pages load their scripts from a CDN: _install_docs serves them
        redoc_url=None,
        # Swagger UI would show a badge fetched from validator.swagger.io (sending it the spec's URL)
        swagger_ui_parameters={"validatorUrl": None},
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
    for module in (models, datasets, jobs, health, problem_pages):
        app.include_router(module.router)
    app.include_router(pages.router)
    _install_docs(app)
    _add_problem_schema(app)
    return app


def _install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their scripts, styles and icon served from the
    fastapi-offline package: the pages work where the browser cannot reach a CDN (air-gapped
    clusters, laptops offline), and load nothing from a third party."""
    assets = StaticFiles(directory=str(files("fastapi_offline") / "static"))
    app.mount(DOCS_ASSETS, assets, name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title}: Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title}: ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,  # fonts.googleapis.com is a CDN too
        )


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
