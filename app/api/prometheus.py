"""Prometheus metrics. One registry per app instance (tests build many apps in one process)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import workers
from app.core.db.models import JOB_STATES, Job, JobEvent


class _FromDatabase(Collector):
    """Figures read from the database at scrape time (it is the source of truth, shared by every
    API process): jobs per state, failures per error code, live workers per queue, and the
    distributions of queue wait, run time and time per stage over the most recent jobs."""

    RECENT = 1000  # jobs the distributions cover: a gauge histogram of "now", not a lifetime count
    BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf"))
    # Stages are shorter than jobs (fetching a model, exporting one: well under a second).
    STAGE_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, float("inf"))

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
                stages = stage_durations(s, self.RECENT)
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
        per_stage = GaugeHistogramMetricFamily(
            "spa_job_stage_seconds", "time in each stage, recent jobs' ended stages", labels=["stage"]
        )
        for stage, values in sorted(stages.items()):
            per_stage.add_metric([stage], self._buckets(values, self.STAGE_BUCKETS), sum(values))
        yield per_stage

    def _histogram(self, name: str, doc: str, values: list[float]) -> GaugeHistogramMetricFamily:
        buckets = self._buckets(values, self.BUCKETS)
        return GaugeHistogramMetricFamily(name, doc, buckets=buckets, gsum_value=sum(values))

    @staticmethod
    def _buckets(values: list[float], bounds: Sequence[float]) -> list[tuple[str, float]]:
        return [(str(b) if b != float("inf") else "+Inf", sum(v <= b for v in values)) for b in bounds]


def stage_durations(session: Any, recent: int) -> dict[str, list[float]]:
    """Seconds per stage over the ``recent`` most recently started jobs. A "stage" event marks a
    stage's start (worker/progress.py); the stage lasts until the job's next stage or state event
    (the next stage, a re-queue, the end) or, failing one, its finished_at. A stage still under way
    is left out: its time is not known yet."""
    jobs = sa.select(Job.id).where(Job.started_at.is_not(None)).order_by(Job.started_at.desc()).limit(recent)
    rows = session.execute(
        sa.select(JobEvent.job_id, JobEvent.kind, JobEvent.stage, JobEvent.at, Job.finished_at)
        .join(Job, Job.id == JobEvent.job_id)
        .where(JobEvent.job_id.in_(jobs.scalar_subquery()), JobEvent.kind.in_(("stage", "state")))
        .order_by(JobEvent.job_id, JobEvent.seq)
    ).all()
    out: dict[str, list[float]] = defaultdict(list)
    for i, row in enumerate(rows):
        if row.kind != "stage" or not row.stage:
            continue
        after = rows[i + 1] if i + 1 < len(rows) and rows[i + 1].job_id == row.job_id else None
        end = after.at if after is not None else row.finished_at
        if end is not None:
            out[row.stage].append(max(0.0, (end - row.at).total_seconds()))
    return out


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
