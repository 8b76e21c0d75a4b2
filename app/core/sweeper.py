"""Recovery of work whose worker died or whose message was lost: running jobs with a stale
heartbeat are re-queued once, then failed; queued jobs that no free worker took are re-sent once,
then failed; models stuck in "validating" get their validation re-sent; with a retention
(``retention_days``), what is older than it is deleted (app.core.retention).

It runs in every worker *and* in the API process: when the last worker is SIGKILLed, nobody
else would notice its job. Every step is a conditional UPDATE that only one sweeper can win, so
any number of them may run at once. ``sender`` is the Celery app messages go out through (the
worker's own, or the API's sending-only one)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from celery import Celery

from app.core import jobstate, retention
from app.core.config import Settings
from app.core.db.models import Job, Model, utcnow
from app.core.db.session import session_scope
from app.core.queue import broker_holds, send_run_job, send_validate_model
from app.core.storage import make_store

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
    outcomes.update(_sweep_queued(settings, sender))
    outcomes.update(_sweep_validations(settings, sender))
    outcomes.update(sweep_staging(make_store(settings).staging_dir, settings.staging_stale_s))
    outcomes.update(retention.sweep_retention(settings))
    return outcomes


def sweep_staging(directory: Path, stale_s: float) -> dict[str, str]:
    """Remove staging files nobody has written to for ``stale_s`` (their writer died mid-transfer:
    a live upload touches its file with every chunk)."""
    out: dict[str, str] = {}
    cutoff = time.time() - stale_s
    for path in directory.glob("*.part") if directory.is_dir() else ():
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                out[path.name] = "stale staging file removed"
        except FileNotFoundError:  # finished or removed by another sweeper meanwhile
            continue
    return out


def _lost(sender: Celery, queue: str, ids: list[str], busy: set[str]) -> tuple[list[str], bool]:
    """Which of ``ids``, queued on ``queue``, the broker no longer holds, and whether the broker
    could be read. Where it cannot (another transport), all of them when nothing runs on the queue
    (a free worker would have taken them), else none. Raises while the broker is away."""
    held = broker_holds(sender, queue)
    if held is not None:
        return [i for i in ids if i not in held], True
    return (list(ids) if queue not in busy else []), False


def _busy(settings: Settings) -> set[str]:
    with session_scope(settings.database_url) as session:
        stale_before = jobstate.stale_cutoff(settings.heartbeat_stale_s)
        return set(session.execute(jobstate.busy_queues(stale_before)).scalars())


def _sweep_queued(settings: Settings, sender: Celery) -> dict[str, str]:
    """Queued jobs whose message the broker no longer holds are re-sent once, then failed (failed
    only when the broker was read: a guess never fails a job; a duplicate message is harmless,
    ``jobstate.claim`` runs a job once)."""
    cutoff = utcnow() - timedelta(seconds=settings.queued_stale_s)
    with session_scope(settings.database_url) as session:
        stale = jobstate.find_stale_queued(session, cutoff)
    by_queue: dict[str, list[str]] = {}
    for job_id, queue in stale:
        by_queue.setdefault(queue, []).append(job_id)
    busy = _busy(settings) if by_queue else set()
    out: dict[str, str] = {}
    for queue, ids in by_queue.items():
        lost, read = _lost(sender, queue, ids, busy)
        for job_id in lost:
            with session_scope(settings.database_url) as session:
                outcome = jobstate.resend_or_fail(session, job_id, cutoff, may_fail=read)
            if outcome == "resent":
                try:
                    send_run_job(sender, job_id, queue)
                except Exception:  # the broker went away: count nothing, the next sweep tries again
                    with session_scope(settings.database_url) as session:
                        jobstate.unmark_resend(session, job_id)
                    raise
                log.warning("job %s re-sent: the broker no longer held its message", job_id)
            elif outcome == "failed":
                log.warning("job %s failed: its message was lost again", job_id)
            if outcome:
                out[job_id] = outcome
    return out


def _sweep_validations(settings: Settings, sender: Celery) -> dict[str, str]:
    """Re-send the validation of models stuck in 'validating': their task died with a worker
    (``validation_stale_s`` after it started), or it never started and the broker no longer holds
    its message (``queued_stale_s``; waiting the long timeout would leave an upload "validating"
    for half an hour). The attempts limit of ``worker.tasks`` ends a model that keeps failing."""
    now = utcnow()
    dead = sa.and_(Model.state == "validating", Model.updated_at < now - timedelta(seconds=settings.validation_stale_s))
    unstarted = sa.and_(
        Model.state == "validating", Model.attempts == 0,
        Model.updated_at < now - timedelta(seconds=settings.queued_stale_s),
    )  # fmt: skip
    with session_scope(settings.database_url) as session:
        candidates = list(session.execute(sa.select(Model.id).where(unstarted)).scalars())
    lost = _lost(sender, settings.queue_cpu, candidates, _busy(settings))[0] if candidates else []
    out: dict[str, str] = {}
    with session_scope(settings.database_url) as session:
        stale = sa.or_(dead, sa.and_(unstarted, Model.id.in_(lost)))
        ids = list(session.execute(sa.select(Model.id).where(stale)).scalars())
        for model_id in ids:  # touch first, so that parallel sweepers do not all re-send
            touched = session.execute(
                sa.update(Model).where(Model.id == model_id, stale).values(updated_at=utcnow())
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
