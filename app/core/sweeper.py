"""Recovery of work whose worker died: running jobs with a stale heartbeat are re-queued once,
then failed; models stuck in "validating" get their validation re-sent.

It runs in every worker *and* in the API process: when the last worker is SIGKILLed, nobody
else would notice its job. Every step is a conditional UPDATE that only one sweeper can win, so
any number of them may run at once. ``sender`` is the Celery app messages go out through (the
worker's own, or the API's sending-only one)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

import sqlalchemy as sa
from celery import Celery

from app.core import jobstate
from app.core.config import Settings
from app.core.db.models import Job, Model, utcnow
from app.core.db.session import session_scope
from app.core.queue import send_run_job, send_validate_model

log = logging.getLogger("spa.sweeper")


def sweep_once(settings: Settings, sender: Celery) -> dict[str, str]:
    """Re-queue (once) or fail running jobs whose heartbeat went stale. Returns id -> outcome."""
    stale_before = jobstate.stale_cutoff(settings.heartbeat_stale_s)
    outcomes: dict[str, str] = {}
    with session_scope(settings.database_url) as session:
        ids = jobstate.find_stale(session, stale_before)
    for job_id in ids:
        with session_scope(settings.database_url) as session:
            outcome = jobstate.sweep_one(
                session, job_id, stale_before=stale_before, max_attempts=settings.max_attempts
            )
            queue = session.get(Job, job_id).queue if outcome == "requeued" else None  # type: ignore[union-attr]
        if outcome:
            outcomes[job_id] = outcome
        if outcome == "requeued":
            send_run_job(sender, job_id, queue)  # type: ignore[arg-type]
            log.warning("job %s re-queued: its worker stopped responding", job_id)
        elif outcome == "failed":
            log.warning("job %s failed: its worker stopped responding again", job_id)
    outcomes.update(_sweep_validations(settings, sender))
    return outcomes


def _sweep_validations(settings: Settings, sender: Celery) -> dict[str, str]:
    """Re-send the validation of models stuck in 'validating' (their task died with a worker)."""
    cutoff = utcnow() - timedelta(seconds=settings.validation_stale_s)
    out: dict[str, str] = {}
    with session_scope(settings.database_url) as session:
        ids = list(
            session.execute(
                sa.select(Model.id).where(Model.state == "validating", Model.updated_at < cutoff)
            ).scalars()
        )
        for model_id in ids:  # touch first, so that parallel sweepers do not all re-send
            touched = session.execute(
                sa.update(Model)
                .where(Model.id == model_id, Model.state == "validating", Model.updated_at < cutoff)
                .values(updated_at=utcnow())
            ).rowcount  # type: ignore[attr-defined]
            if touched == 1:
                out[model_id] = "validation re-sent"
    for model_id in out:
        send_validate_model(sender, model_id, settings.queue_cpu)
    return out


class Periodic(threading.Thread):
    """``fn()`` every ``interval_s`` until ``stop_event`` is set; a failed round (the database
    away for a while) is logged and the next one tries again."""

    def __init__(self, interval_s: float, fn: Callable[[], object], name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.interval_s, self.fn = interval_s, fn
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            try:
                self.fn()
            except Exception:
                log.warning("%s failed", self.name, exc_info=True)


def sweeper(settings: Settings, sender: Celery, name: str = "spa-sweeper") -> Periodic:
    """``sweep_once`` every ``settings.sweep_interval_s`` (started by the caller)."""
    return Periodic(settings.sweep_interval_s, lambda: sweep_once(settings, sender), name)
