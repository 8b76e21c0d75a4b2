"""Prometheus metrics. One registry per app instance (tests build many apps in one process)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.db.models import JOB_STATES, Job


class _JobStates(Collector):
    """Jobs per state, read from the database at scrape time (it is the source of truth)."""

    def __init__(self, sessionmaker: Any) -> None:
        self.sessionmaker = sessionmaker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("spa_jobs", "jobs by state", labels=["state"])
        counts = dict.fromkeys(JOB_STATES, 0)
        try:
            with self.sessionmaker() as s:
                for state, n in s.execute(sa.select(Job.state, sa.func.count()).group_by(Job.state)):
                    counts[state] = n
        except Exception:
            return
        for state, n in counts.items():
            family.add_metric([state], n)
        yield family


class Metrics:
    def __init__(self, sessionmaker: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "spa_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "spa_http_request_seconds", "HTTP request latency", ["method", "route"], registry=self.registry
        )
        self.registry.register(_JobStates(sessionmaker))

    def install(self, app: FastAPI) -> None:
        app.add_middleware(_ObserveMiddleware, metrics=self)


class _ObserveMiddleware:
    """Plain ASGI (not BaseHTTPMiddleware): no extra task and body stream per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observe_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe_send)
        finally:
            # The route template, not the path: ids would explode the label cardinality.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - start)
