"""Deleting jobs, models and datasets (the API's DELETE routes, and the sweeper's retention), and
their blobs once nothing refers to them any more.

Rows go first, committed, and a blob only after: a row never points at a missing blob (the
reverse order of an upload, where the bytes go before the row). A job is deleted only in a final
state, by one conditional DELETE: a job that is still queued or running is never removed under
its worker (jobstate: nothing leaves a final state). A model or dataset is deleted only while no
job refers to it (the jobs table's foreign keys: a job's record keeps naming what it ran on)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.db.models import Dataset, Job, JobEvent, JobTag, Model, utcnow
from app.core.db.session import session_scope
from app.core.storage import BlobStore, make_store

log = logging.getLogger("spa.retention")
FINAL_STATES = ("succeeded", "failed", "cancelled")
SWEEP_BATCH = 200  # rows of each kind one retention sweep deletes at most: a backlog goes in rounds


def blob_in_use(session: Session, sha256: str) -> bool:
    """Whether any model, dataset or job artifact (of any tenant: identical bytes share a blob)
    still refers to this blob. Artifacts live in a JSON column: its text holding the 64-digit
    digest is the same test on every backend (no other text contains 64 hex digits by chance);
    a scan, but deleting is rare."""
    for query in (
        sa.select(Model.id).where(Model.sha256 == sha256),
        sa.select(Dataset.id).where(Dataset.sha256 == sha256),
        sa.select(Job.id).where(sa.cast(Job.artifacts, sa.Text).like(f"%{sha256}%")),
    ):
        if session.execute(query.limit(1)).first() is not None:
            return True
    return False


def release_blobs(session: Session, store: BlobStore, digests: set[str]) -> list[str]:
    """Delete the blobs of ``digests`` nothing refers to any more (after the rows' commit)."""
    released = []
    for sha256 in sorted(digests):
        if not blob_in_use(session, sha256):
            store.delete(sha256)
            released.append(sha256)
    return released


def delete_job(session: Session, store: BlobStore, job_id: str) -> str | None:
    """Delete a finished job: its row, events, tags, and the blobs of its artifacts no other row
    refers to. Returns "deleted", the job's state when it is not finished (nothing is changed), or
    None when there is no such job. Commits."""
    artifacts = session.execute(sa.select(Job.artifacts).where(Job.id == job_id)).scalar_one_or_none()
    # conditional: a job cancelled meanwhile is deletable, one re-queued meanwhile is not
    deleted = session.execute(sa.delete(Job).where(Job.id == job_id, Job.state.in_(FINAL_STATES)))
    if deleted.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return session.execute(sa.select(Job.state).where(Job.id == job_id)).scalar_one_or_none()
    # the foreign keys cascade too; said here so as not to depend on SQLite's foreign_keys pragma
    session.execute(sa.delete(JobEvent).where(JobEvent.job_id == job_id))
    session.execute(sa.delete(JobTag).where(JobTag.job_id == job_id))
    session.commit()
    release_blobs(session, store, {a["sha256"] for a in (artifacts or {}).values()})
    return "deleted"


def _users(session: Session, column: Any, row_id: str) -> tuple[int, int]:
    """(unfinished, finished) jobs whose ``column`` is ``row_id``."""
    done = Job.state.in_(FINAL_STATES)
    rows = session.execute(sa.select(done, sa.func.count()).where(column == row_id).group_by(done)).all()
    counts = {bool(finished): n for finished, n in rows}
    return counts.get(False, 0), counts.get(True, 0)


def in_use(session: Session, cls: type[Model] | type[Dataset], row_id: str) -> str | None:
    """Why the model or dataset cannot be deleted now (a sentence), or None."""
    what = "model" if cls is Model else "dataset"
    unfinished, finished = _users(session, Job.model_id if cls is Model else Job.dataset_id, row_id)
    if cls is Dataset:
        # an eval dataset is named in the spec only (no foreign key): only a job that will still
        # read it holds it (a job counted by its dataset_id already is not counted twice)
        unfinished += session.execute(
            sa.select(sa.func.count()).where(
                Job.state.not_in(FINAL_STATES),
                sa.or_(Job.dataset_id.is_(None), Job.dataset_id != row_id),
                sa.cast(Job.spec, sa.Text).like(f"%{row_id}%"),
            )
        ).scalar_one()
    if unfinished:
        return f"{unfinished} queued or running job(s) use this {what}; cancel them first"
    if finished:
        return (f"{finished} finished job(s) refer to this {what} (a job's record names what it ran on); "
                "delete them first")  # fmt: skip
    return None


def delete_upload(
    session: Session, store: BlobStore, cls: type[Model] | type[Dataset], row_id: str
) -> str | None:
    """Delete a model or dataset, and its blob when no other row refers to it. None when done (or
    when it was gone already), else why not (nothing is changed). Commits."""
    if (why := in_use(session, cls, row_id)) is not None:
        return why
    sha256 = session.execute(sa.select(cls.sha256).where(cls.id == row_id)).scalar_one_or_none()
    try:
        session.execute(sa.delete(cls).where(cls.id == row_id))
        session.commit()
    except IntegrityError:  # a job that refers to it was submitted meanwhile (the foreign key)
        session.rollback()
        return in_use(session, cls, row_id) or f"a job refers to this {cls.__name__.lower()}"
    if sha256 is not None:
        release_blobs(session, store, {sha256})
    return None


def sweep_retention(settings: Settings, store: BlobStore | None = None) -> dict[str, str]:
    """Delete what is older than ``settings.retention_days`` (0: keep forever): finished jobs that
    finished before then, then models and datasets uploaded before then that no job refers to
    (those of the jobs just deleted included). Returns id -> outcome."""
    if settings.retention_days <= 0:
        return {}
    cutoff = utcnow() - timedelta(days=settings.retention_days)
    store = store or make_store(settings)
    out: dict[str, str] = {}
    with session_scope(settings.database_url) as session:
        ids = (
            session.execute(
                sa.select(Job.id)
                .where(
                    Job.state.in_(FINAL_STATES), sa.func.coalesce(Job.finished_at, Job.created_at) < cutoff
                )
                .limit(SWEEP_BATCH)
            )
            .scalars()
            .all()
        )
        for job_id in ids:
            if delete_job(session, store, job_id) == "deleted":  # else another sweeper was first
                out[job_id] = "job deleted (retention)"
        for cls, ref in ((Model, Job.model_id), (Dataset, Job.dataset_id)):
            old = sa.select(cls.id).where(cls.created_at < cutoff, ~sa.exists().where(ref == cls.id))
            if cls is Model:  # a validation in progress still writes the row
                old = old.where(Model.state != "validating")
            for row_id in session.execute(old.limit(SWEEP_BATCH)).scalars().all():
                if delete_upload(session, store, cls, row_id) is None:
                    out[row_id] = f"{cls.__name__.lower()} deleted (retention)"
    if out:
        log.info("retention: %d row(s) older than %s day(s) deleted", len(out), settings.retention_days)
    return out
