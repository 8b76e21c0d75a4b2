"""SQLAlchemy 2 models. The jobs table is the one source of truth for job state.

Public ids are random uuid4 hex strings: not guessable, so ids carry no information across tenants.
Every resource has ``owner_id`` (the API key id, or ``"local"`` in the no-auth embedded mode).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

JOB_STATES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset otherwise)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: sa.JSON, list[Any]: sa.JSON}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(sa.String(200))
    # sha256 of the whole key: keys are 256-bit random tokens, so a fast hash is enough (no
    # dictionary to attack) and lets the lookup use an index.
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (sa.UniqueConstraint("owner_id", "sha256", name="uq_models_owner_sha256"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(sa.String(32), index=True)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    filename: Mapped[str] = mapped_column(sa.String(255))  # display only, never a path
    format: Mapped[str] = mapped_column(sa.String(8))  # onnx | zip | pt2
    state: Mapped[str] = mapped_column(sa.String(16), default="validating")
    reason: Mapped[str | None] = mapped_column(sa.Text, default=None)
    summary: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    groups: Mapped[list[Any] | None] = mapped_column(default=None, deferred=True)  # only its own route reads it
    # Validation runs started: a model that kills its worker is declared invalid, not retried forever.
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (sa.UniqueConstraint("owner_id", "sha256", name="uq_datasets_owner_sha256"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(sa.String(32), index=True)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    filename: Mapped[str] = mapped_column(sa.String(255))
    arrays: Mapped[dict[str, Any]] = mapped_column()  # name -> {shape, dtype}
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        sa.Index("ix_jobs_owner_created", "owner_id", "created_at"),
        sa.Index("ix_jobs_state_heartbeat", "state", "heartbeat_at"),
        sa.Index("ix_jobs_owner_name", "owner_id", "name"),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(sa.String(32))
    model_id: Mapped[str] = mapped_column(sa.ForeignKey("models.id"))
    dataset_id: Mapped[str | None] = mapped_column(sa.ForeignKey("datasets.id"), default=None)
    spec: Mapped[dict[str, Any]] = mapped_column()
    request_hash: Mapped[str] = mapped_column(sa.String(64))  # of the normalized request body
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    queue: Mapped[str] = mapped_column(sa.String(64))
    state: Mapped[str] = mapped_column(sa.String(16), default="queued")
    stage: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    progress: Mapped[float] = mapped_column(sa.Float, default=0.0)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    error: Mapped[str | None] = mapped_column(sa.Text, default=None)
    error_code: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    summary: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # The full report (per layer and group: megabytes for a big model) is read by no API route
    # (report.json is an artifact): never loaded with the row, which every poll reads.
    report: Mapped[dict[str, Any] | None] = mapped_column(default=None, deferred=True)
    artifacts: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # name -> {sha256, size}
    worker: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    next_seq: Mapped[int] = mapped_column(sa.Integer, default=1)  # next event number
    # When the job last became "queued" (submit, or a re-queue), and how often its message was
    # re-sent because it looked lost (a broker restarted empty, a message consumed while the
    # database was away): app.core.sweeper re-sends once, then fails the job with the reason.
    queued_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    resends: Mapped[int] = mapped_column(sa.Integer, default=0)
    # The submitter's labels (POST /v1/jobs), returned as given; NULL on jobs older than revision
    # 0004 (answered as none). The tags are also rows of job_tags, which is what filters by them.
    name: Mapped[str | None] = mapped_column(sa.String(100), default=None)
    tags: Mapped[list[Any] | None] = mapped_column(default=None)
    # "metadata" is the declarative base's own attribute: the column keeps the public name.
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", default=None)


class JobTag(Base):
    """One row per tag of a job, for GET /v1/jobs?tag=: membership in a JSON list is written
    differently on SQLite and PostgreSQL and indexed by neither portably; a plain table is both,
    with the same query. Tags never change after the submit, so the copy in jobs.tags (what the
    poll returns from the jobs row alone) cannot drift from these rows."""

    __tablename__ = "job_tags"
    __table_args__ = (sa.Index("ix_job_tags_tag", "tag", "job_id"),)

    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(sa.String(64), primary_key=True)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (sa.UniqueConstraint("job_id", "seq", name="uq_job_events_job_seq"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(sa.Integer)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(sa.String(16))  # state | stage | progress | log
    stage: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    progress: Mapped[float | None] = mapped_column(sa.Float, default=None)
    message: Mapped[str | None] = mapped_column(sa.Text, default=None)


class WorkerBeat(Base):
    """A live worker and the queues it consumes, refreshed every ``heartbeat_interval_s``: /readyz
    says per queue whether anyone consumes it, and a job sent to a queue nobody consumes says so."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    queues: Mapped[str] = mapped_column(sa.String(400))  # comma-separated
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow, index=True)
