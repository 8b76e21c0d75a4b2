"""Prometheus metrics. One registry per app instance (tests build many apps in one process)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import workers
from app.core.db.models import JOB_STATES, Job


class _FromDatabase(Collector):
    """Figures read from the database at scrape time (it is the source of truth, shared by every
    API process): jobs per state, failures per error code, live workers per queue, and the
    distributions of queue wait and run time over the most recent jobs."""

    RECENT = 1000  # jobs the distributions cover: a gauge histogram of "now", not a lifetime count
    BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf"))

    def __init__(self, sessionmaker: Any, settings: Any) -> None:
        self.sessionmaker, self.settings = sessionmaker, settings

    def collect(self) -> Iterator[Any]:
        try:
            with self.sessionmaker() as s:
                states = dict(s.execute(sa.select(Job.state, sa.func.count()).group_by(Job.state)).all())
                codes = dict(
                    s.execute(
                        sa.select(Job.error_code, sa.func.count())
                        .where(Job.state == "failed").group_by(Job.error_code)
                    ).all()
                )
                queues = [self.settings.queue_cpu, self.settings.queue_gpu]
                live = workers.live_by_queue(s, self.settings.heartbeat_stale_s, queues)
                recent = s.execute(
                    sa.select(Job.created_at, Job.started_at, Job.finished_at)
                    .where(Job.started_at.is_not(None)).order_by(Job.started_at.desc()).limit(self.RECENT)
                ).all()
        except Exception:  # the database away: /readyz says so; the scrape still has the rest
            return
        family = GaugeMetricFamily("spa_jobs", "jobs by state", labels=["state"])
        for state in JOB_STATES:
            family.add_metric([state], states.get(state, 0))
        yield family
        failures = GaugeMetricFamily("spa_job_failures", "failed jobs by error code", labels=["code"])
        for code, n in sorted(codes.items(), key=lambda kv: str(kv[0])):
            failures.add_metric([code or "unknown"], n)
        yield failures
        alive = GaugeMetricFamily("spa_workers_alive", "live workers consuming each queue", labels=["queue"])
        for queue, n in live.items():
            alive.add_metric([queue], n)
        yield alive
        waits = [(r.started_at - r.created_at).total_seconds() for r in recent]
        runs = [(r.finished_at - r.started_at).total_seconds() for r in recent if r.finished_at]
        yield self._histogram("spa_job_queue_wait_seconds", "submit to start, recent jobs", waits)
        yield self._histogram("spa_job_run_seconds", "start to end, recent finished jobs", runs)

    def _histogram(self, name: str, doc: str, values: list[float]) -> GaugeHistogramMetricFamily:
        buckets = [(str(b) if b != float("inf") else "+Inf", sum(v <= b for v in values)) for b in self.BUCKETS]
        return GaugeHistogramMetricFamily(name, doc, buckets=buckets, gsum_value=sum(values))


class Metrics:
    def __init__(self, sessionmaker: Any, settings: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "spa_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "spa_http_request_seconds", "HTTP request latency", ["method", "route"], registry=self.registry
        )
        self.registry.register(_FromDatabase(sessionmaker, settings))
        # The API process's own memory, CPU and open files (flat memory under uploads is a promise).
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

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
