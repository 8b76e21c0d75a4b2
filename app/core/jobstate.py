"""The job state machine, shared by the API and the worker. The database is the only source of
job state; every transition is a conditional UPDATE so that two actors (API cancel, worker,
sweeper, a redelivered message) can race without corrupting it.

    queued -> running -> succeeded | failed | cancelled
    queued -> cancelled              running -> cancelling -> cancelled
    running (heartbeat stale) -> queued (re-run, while attempts < max_attempts) | failed
    queued (message lost: waited, its queue idle) -> queued (re-sent once) | failed
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.db.models import Job, JobEvent, utcnow


def add_event(
    session: Session,
    job_id: str,
    kind: str,
    *,
    stage: str | None = None,
    progress: float | None = None,
    message: str | None = None,
) -> int:
    """Append an event with the job's next sequence number (atomic: the UPDATE locks the row)."""
    seq = session.execute(
        sa.update(Job).where(Job.id == job_id).values(next_seq=Job.next_seq + 1).returning(Job.next_seq)
    ).scalar_one()
    seq -= 1
    session.add(JobEvent(job_id=job_id, seq=seq, kind=kind, stage=stage, progress=progress, message=message))
    return seq


def _transition(session: Session, job_id: str, from_states: tuple[str, ...], **values: Any) -> bool:
    result = session.execute(
        sa.update(Job).where(Job.id == job_id, Job.state.in_(from_states)).values(**values)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


@dataclass
class CancelOutcome:
    state: str
    changed: bool


def request_cancel(session: Session, job_id: str) -> CancelOutcome:
    """Queued jobs are cancelled at once (the worker will skip them); running ones are asked to
    stop at their next progress point. Caller commits."""
    now = utcnow()
    if _transition(session, job_id, ("queued",), state="cancelled", finished_at=now, stage=None):
        add_event(session, job_id, "state", message="cancelled before it started")
        return CancelOutcome("cancelled", True)
    if _transition(session, job_id, ("running",), state="cancelling"):
        add_event(session, job_id, "state", message="cancel requested; stopping at the next progress point")
        return CancelOutcome("cancelling", True)
    state = session.execute(sa.select(Job.state).where(Job.id == job_id)).scalar_one()
    return CancelOutcome(state, False)


@dataclass
class Claim:
    ok: bool
    attempt: int = 0
    reason: str = ""


def _stale(stale_before: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before)


def claim(session: Session, job_id: str, worker: str, *, stale_before: datetime, max_attempts: int) -> Claim:
    """Take a job for running. Succeeds for a queued job, or for a running one whose worker went
    silent (a redelivered message after a SIGKILL). A job that has already used max_attempts is
    failed instead of run again, so a model that kills workers cannot loop forever. Commits.

    One conditional UPDATE decides, so a redelivered message and a sweeper re-send cannot both run
    the job (on SQLite a read-then-write would race between processes)."""
    now = utcnow()
    prev = session.execute(sa.select(Job.state).where(Job.id == job_id)).scalar_one_or_none()
    if prev is None:
        return Claim(False, reason="no such job")
    took = session.execute(
        sa.update(Job)
        .where(
            Job.id == job_id,
            Job.attempts < max_attempts,
            sa.or_(Job.state == "queued", sa.and_(Job.state == "running", _stale(stale_before))),
        )
        .values(
            state="running",
            attempts=Job.attempts + 1,
            worker=worker,
            heartbeat_at=now,
            started_at=sa.func.coalesce(Job.started_at, now),
            stage="starting",
            progress=0.0,
        )
    ).rowcount  # type: ignore[attr-defined]
    if took != 1:
        failed = fail_lost(session, job_id, stale_before=stale_before, max_attempts=max_attempts)
        session.commit()
        return Claim(False, reason="attempts exhausted" if failed else f"job is {prev}")
    attempt = session.execute(sa.select(Job.attempts).where(Job.id == job_id)).scalar_one()
    note = f"attempt {attempt} on {worker}"
    if prev == "running":
        note += " (the previous worker stopped responding)"
    add_event(session, job_id, "state", stage="starting", progress=0.0, message=f"running: {note}")
    session.commit()
    return Claim(True, attempt=attempt)


def fail_lost(session: Session, job_id: str, *, stale_before: datetime, max_attempts: int) -> bool:
    """Fail a silent running job that has used all its attempts. True when it did."""
    error = (
        "the worker running this job stopped responding (killed, or out of memory); "
        f"not retried again after {max_attempts} attempt(s)"
    )
    ok = (
        session.execute(
            sa.update(Job)
            .where(
                Job.id == job_id,
                Job.state == "running",
                Job.attempts >= max_attempts,
                _stale(stale_before),
            )
            .values(state="failed", error_code="worker_lost", error=error, finished_at=utcnow())
        ).rowcount
        == 1
    )  # type: ignore[attr-defined]
    if ok:
        add_event(session, job_id, "state", message=error)
    return ok


def heartbeat(
    session: Session, job_id: str, *, stage: str | None = None, progress: float | None = None
) -> str:
    """Record liveness (and progress); returns the job's state so the caller can see a cancel."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if stage is not None:
        values["stage"] = stage
    if progress is not None:
        values["progress"] = max(0.0, min(1.0, progress))
    session.execute(
        sa.update(Job).where(Job.id == job_id, Job.state.in_(("running", "cancelling"))).values(**values)
    )
    return session.execute(sa.select(Job.state).where(Job.id == job_id)).scalar_one()


def finish(session: Session, job_id: str, state: str, *, message: str | None = None, **values: Any) -> bool:
    """running/cancelling -> a final state. False when the job was no longer ours (swept, failed)."""
    ok = _transition(session, job_id, ("running", "cancelling"), state=state, finished_at=utcnow(), **values)
    if ok:
        add_event(
            session,
            job_id,
            "state",
            stage=values.get("stage"),
            progress=values.get("progress"),
            message=message or state,
        )
    return ok


def find_stale(session: Session, stale_before: datetime) -> list[str]:
    rows = session.execute(
        sa.select(Job.id).where(
            Job.state.in_(("running", "cancelling")),
            sa.or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before),
        )
    )
    return [r[0] for r in rows]


def sweep_one(session: Session, job_id: str, *, stale_before: datetime, max_attempts: int) -> str | None:
    """Recover one job whose worker went silent. Returns 'requeued', 'failed', 'cancelled' or None
    (someone else got there first). Caller commits, then re-sends the task when 'requeued'."""
    cancelled = (
        session.execute(
            sa.update(Job)
            .where(Job.id == job_id, Job.state == "cancelling", _stale(stale_before))
            .values(state="cancelled", finished_at=utcnow())
        ).rowcount
        == 1
    )  # type: ignore[attr-defined]
    if cancelled:
        add_event(session, job_id, "state", message="cancelled (its worker stopped responding)")
        return "cancelled"
    if fail_lost(session, job_id, stale_before=stale_before, max_attempts=max_attempts):
        return "failed"
    requeued = (
        session.execute(
            sa.update(Job)
            .where(
                Job.id == job_id, Job.state == "running", Job.attempts < max_attempts, _stale(stale_before)
            )
            .values(state="queued", stage=None, progress=0.0, queued_at=utcnow())
        ).rowcount
        == 1
    )  # type: ignore[attr-defined]
    if requeued:
        add_event(session, job_id, "state", message="re-queued: the worker running it stopped responding")
        return "requeued"
    return None


def stale_cutoff(stale_s: float) -> datetime:
    return utcnow() - timedelta(seconds=stale_s)


def delete_unsent(session: Session, job_id: str) -> None:
    """The broker refused the message: remove the job (and its events) it will never run."""
    session.execute(sa.delete(JobEvent).where(JobEvent.job_id == job_id))
    session.execute(sa.delete(Job).where(Job.id == job_id, Job.state == "queued"))


def busy_queues(stale_before: datetime) -> sa.Select[tuple[str]]:
    """Queues where a job is running with a fresh heartbeat: their workers are busy."""
    return sa.select(Job.queue).where(
        Job.state.in_(("running", "cancelling")), Job.heartbeat_at >= stale_before
    )


def find_stale_queued(session: Session, cutoff: datetime) -> list[tuple[str, str]]:
    """(id, queue) of jobs queued since before ``cutoff``: the sweeper checks that the broker still
    holds their message."""
    rows = session.execute(
        sa.select(Job.id, Job.queue).where(
            Job.state == "queued", sa.func.coalesce(Job.queued_at, Job.created_at) < cutoff
        )
    )
    return [(r[0], r[1]) for r in rows]


def resend_or_fail(session: Session, job_id: str, cutoff: datetime, *, may_fail: bool) -> str | None:
    """A queued job whose message is gone: mark it re-sent the first time ('resent': the caller
    sends the message after commit); when its re-sent message is gone too, fail it with the reason
    ('failed', only with ``may_fail``: the broker was read, not guessed at). None when another
    sweeper got there first, or nothing is to be done. Caller commits."""
    stale = sa.and_(
        Job.id == job_id, Job.state == "queued", sa.func.coalesce(Job.queued_at, Job.created_at) < cutoff
    )
    if session.execute(
        sa.update(Job).where(stale, Job.resends < 1).values(resends=Job.resends + 1, queued_at=utcnow())
    ).rowcount == 1:  # type: ignore[attr-defined]
        add_event(session, job_id, "state", message="re-sent: the broker no longer held its message")
        return "resent"
    if not may_fail:
        return None
    error = (
        "the job's message was lost twice before a worker took it (the broker restarted without "
        "persistence?); submit it again"
    )
    if session.execute(
        sa.update(Job).where(stale).values(state="failed", error_code="lost", error=error, finished_at=utcnow())
    ).rowcount == 1:  # type: ignore[attr-defined]
        add_event(session, job_id, "state", message=error)
        return "failed"
    return None


def unmark_resend(session: Session, job_id: str) -> None:
    """The re-send did not reach the broker: the next sweep tries again (caller commits)."""
    session.execute(
        sa.update(Job).where(Job.id == job_id, Job.state == "queued", Job.resends > 0)
        .values(resends=Job.resends - 1)
    )
