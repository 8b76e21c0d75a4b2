"""The broker side that the API and the worker share: task names and the Celery app factory.

The API sends tasks by name through ``make_celery(settings)`` and never imports worker code; the
worker builds its app from the same function, adding the module that defines the tasks
(``worker/celery_app.py``). Celery configuration only: nothing here imports torch or the library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from app.core.config import Settings

TASK_RUN_JOB = "spa.run_job"
TASK_VALIDATE_MODEL = "spa.validate_model"


def transport_options(settings: Settings) -> dict[str, Any]:
    url = settings.broker_url
    if url.startswith(("redis", "rediss", "sqs")):
        # Unacked messages come back after this long: above the hard time limit, so a slow job is
        # never handed to a second worker while the first still runs it.
        opts: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
        if settings.broker_key_prefix:
            opts["global_keyprefix"] = settings.broker_key_prefix
        return opts
    if url.startswith(("sqla+", "sqlalchemy+")):
        # These options go to sqlalchemy.create_engine: wait for SQLite's lock, never fail fast.
        return {"connect_args": {"timeout": 30}}
    return {}


def make_celery(settings: Settings, *, include: Sequence[str] = ()) -> Celery:
    """The Celery app for these settings. ``include``: task modules a worker imports at start (the
    API passes none: it only sends)."""
    app = Celery("spa", broker=settings.broker_url, include=list(include), set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        # The database holds job state; no result backend to keep in sync.
        task_ignore_result=True,
        result_backend=None,
        # A job is acked only when it is done: a worker killed mid-job leaves it for redelivery.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_queues=tuple(
            Queue(q, Exchange(q, type="direct"), routing_key=q)
            for q in (settings.queue_cpu, settings.queue_gpu)
        ),
        task_default_exchange=settings.queue_cpu,
        task_default_routing_key=settings.queue_cpu,
        task_default_queue=settings.queue_cpu,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # torch keeps memory it has touched; a fresh child now and then returns it to the system.
        worker_max_tasks_per_child=20,
        enable_utc=True,
    )
    app.conf.spa_settings = settings
    return app


def send_run_job(sender: Celery, job_id: str, queue: str) -> None:
    """Queue a job for a worker of ``queue`` (the job row must be committed first)."""
    sender.send_task(TASK_RUN_JOB, args=[job_id], queue=queue)


def send_validate_model(sender: Celery, model_id: str, queue: str) -> None:
    """Queue the validation of an uploaded model (the model row must be committed first)."""
    sender.send_task(TASK_VALIDATE_MODEL, args=[model_id], queue=queue)


def broker_holds(sender: Celery, queue: str) -> str | None:
    """Every message the broker holds for ``queue``, waiting or delivered but not yet acknowledged,
    as one string to search for job ids (task arguments appear in the message headers); None when
    this transport cannot be read (then the sweeper only re-sends, never fails). Raises when the
    broker is unreachable.

    The sweeper asks this to tell a job that waits its turn from one whose message is gone (a Redis
    restarted without persistence, a message consumed while the database was away)."""
    with sender.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1)
        channel: Any = conn.default_channel
        driver = conn.transport.driver_type
        if driver == "redis":
            prefix = getattr(channel, "global_keyprefix", "") or ""
            client = channel.client
            # Keys spelled out with their prefix: LRANGE and HVALS are not among the commands
            # kombu's prefixing client rewrites.
            raw = [
                item
                for pri in channel.priority_steps
                for item in client.execute_command("LRANGE", prefix + channel._q_for_pri(queue, pri), 0, -1)
            ]
            raw += client.execute_command("HVALS", prefix + channel.unacked_key)
            return "\n".join(r.decode(errors="replace") if isinstance(r, bytes) else str(r) for r in raw)
        if driver == "sql":
            session = channel.session
            try:
                rows = (
                    session.query(channel.message_cls.payload)
                    .join(channel.queue_cls, channel.message_cls.queue_id == channel.queue_cls.id)
                    # Delivered messages stay behind invisible, acknowledged or not: only the
                    # waiting ones say anything (one a worker holds unclaimed is re-sent, harmlessly).
                    .filter(channel.queue_cls.name == queue, channel.message_cls.visible.is_(True))
                    .all()
                )
            finally:
                session.commit()  # end the read transaction: SQLite writers would wait on it
            return "\n".join(str(r[0]) for r in rows)
        return None
