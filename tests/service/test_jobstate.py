"""The job state machine on the real databases: claim, heartbeat, sweep of silent workers,
cancel races. (The end-to-end SIGKILL test is in test_worker.py.) Each test has a database of its
own: a live worker's sweeper would otherwise recover the jobs these tests age on purpose."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from app.core import jobstate
from app.core.config import Settings
from app.core.db.models import Job, JobEvent, Model, utcnow
from app.core.db.session import session_scope


def _job(settings: Settings, queue: str = "q") -> str:
    with session_scope(settings.database_url) as s:
        m = Model(owner_id="o", sha256=os.urandom(32).hex(), size=1, filename="m.onnx", format="onnx")
        s.add(m)
        s.flush()
        j = Job(owner_id="o", model_id=m.id, spec={}, request_hash="h", queue=queue)
        s.add(j)
        s.flush()
        return j.id


def _age(settings: Settings, job_id: str, seconds: float) -> None:
    with session_scope(settings.database_url) as s:
        s.get(Job, job_id).heartbeat_at = utcnow() - timedelta(seconds=seconds)  # type: ignore[union-attr]


def _get(settings: Settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def test_claim_sweep_requeue_once_then_fail(private_settings: Settings) -> None:
    job_id = _job(private_settings)
    db = private_settings.database_url
    cutoff = lambda: jobstate.stale_cutoff(10)  # noqa: E731
    with session_scope(db) as s:
        assert jobstate.claim(s, job_id, "w1", stale_before=cutoff(), max_attempts=2).attempt == 1
    with session_scope(db) as s:  # a second delivery while the first worker is alive: refused
        assert not jobstate.claim(s, job_id, "w2", stale_before=cutoff(), max_attempts=2).ok
        assert jobstate.sweep_one(s, job_id, stale_before=cutoff(), max_attempts=2) is None
    _age(private_settings, job_id, 60)
    with session_scope(db) as s:
        assert jobstate.sweep_one(s, job_id, stale_before=cutoff(), max_attempts=2) == "requeued"
    assert _get(private_settings, job_id).state == "queued"
    with session_scope(db) as s:
        assert jobstate.claim(s, job_id, "w2", stale_before=cutoff(), max_attempts=2).attempt == 2
    _age(private_settings, job_id, 60)
    with session_scope(db) as s:  # the redelivered message of the dead second run: no third run
        got = jobstate.claim(s, job_id, "w3", stale_before=cutoff(), max_attempts=2)
    assert not got.ok and got.reason == "attempts exhausted"
    job = _get(private_settings, job_id)
    assert job.state == "failed" and job.error_code == "worker_lost" and job.attempts == 2


def test_cancel_races(private_settings: Settings) -> None:
    db = private_settings.database_url
    job_id = _job(private_settings)
    with session_scope(db) as s:
        jobstate.claim(s, job_id, "w", stale_before=jobstate.stale_cutoff(10), max_attempts=2)
    with session_scope(db) as s:
        assert jobstate.request_cancel(s, job_id).state == "cancelling"
    with session_scope(db) as s:
        assert jobstate.heartbeat(s, job_id, stage="score", progress=0.5) == "cancelling"
    _age(private_settings, job_id, 60)
    with session_scope(db) as s:  # its worker died while cancelling: it ends cancelled, not re-run
        assert (
            jobstate.sweep_one(s, job_id, stale_before=jobstate.stale_cutoff(10), max_attempts=2)
            == "cancelled"
        )
    with session_scope(db) as s:
        assert not jobstate.finish(s, job_id, "succeeded")  # a late finish cannot resurrect it
        assert jobstate.request_cancel(s, job_id) == jobstate.CancelOutcome("cancelled", False)
    assert _get(private_settings, job_id).state == "cancelled"


def test_model_that_keeps_killing_validation_becomes_invalid(private_settings: Settings) -> None:
    from worker.tasks import _claim_validation

    with session_scope(private_settings.database_url) as s:
        m = Model(owner_id="o", sha256=os.urandom(32).hex(), size=1, filename="m.onnx", format="onnx")
        s.add(m)
        s.flush()
        model_id = m.id
    # Each claim is one validation run whose worker then "died" (nothing reported back).
    assert _claim_validation(private_settings, model_id) is not None
    assert _claim_validation(private_settings, model_id) is not None
    assert _claim_validation(private_settings, model_id) is None  # max_attempts (2) used up
    with session_scope(private_settings.database_url) as s:
        m = s.get(Model, model_id)
        assert (
            m is not None
            and m.state == "invalid"
            and "did not finish" in (m.reason or "")
            and m.attempts == 2
        )


def test_api_process_recovers_a_dead_workers_job(private_settings: Settings) -> None:
    """No worker is left: the API's own sweeper re-queues the silent job (and says so)."""
    import time

    from app.core.db.models import JobEvent
    from tests.service.conftest import make_client

    settings = private_settings.model_copy(update={"sweep_interval_s": 0.2})
    job_id = _job(settings)
    with session_scope(settings.database_url) as s:
        jobstate.claim(s, job_id, "dead-worker", stale_before=jobstate.stale_cutoff(10), max_attempts=2)
    _age(settings, job_id, settings.heartbeat_stale_s + 5)
    with make_client(settings):  # the API process alone
        deadline = time.monotonic() + 20
        while _get(settings, job_id).state != "queued" and time.monotonic() < deadline:
            time.sleep(0.1)
    assert _get(settings, job_id).state == "queued"
    with session_scope(settings.database_url) as s:
        msgs = [e.message for e in s.query(JobEvent).filter(JobEvent.job_id == job_id)]
    assert any("re-queued" in (m or "") for m in msgs)


def _age_queued(settings: Settings, job_id: str, seconds: float) -> None:
    with session_scope(settings.database_url) as s:
        s.get(Job, job_id).queued_at = utcnow() - timedelta(seconds=seconds)  # type: ignore[union-attr]


def test_lost_queued_job_resent_once_then_failed(private_settings: Settings) -> None:
    """A queued job whose message the broker no longer holds (a Redis restarted empty) is re-sent
    once by the sweep, and failed with the reason when the re-sent message is lost too; a job whose
    message waits in the broker is left alone, however long it waits."""
    from app.core.queue import make_celery, send_run_job
    from app.core.sweeper import sweep_once

    settings = private_settings.model_copy(update={"queued_stale_s": 5.0})
    queue = f"{settings.queue_cpu}-lost"
    sender = make_celery(settings)
    db = settings.database_url
    waiting, lost = _job(settings, queue), _job(settings, queue)
    send_run_job(sender, waiting, queue)  # only `waiting` has its message in the broker
    _age_queued(settings, waiting, 60)
    _age_queued(settings, lost, 60)

    out = sweep_once(settings, sender)
    assert waiting not in out and out[lost] == "resent"
    job = _get(settings, lost)
    assert job.state == "queued" and job.resends == 1
    assert job.queued_at is not None and job.queued_at > utcnow() - timedelta(seconds=5)
    _age_queued(settings, lost, 60)
    assert lost not in sweep_once(settings, sender)  # its re-sent message is in the broker now

    with sender.connection_for_write() as conn:  # and is lost again
        conn.default_channel.queue_purge(queue)
    out = sweep_once(settings, sender)
    assert out[lost] == "failed" and out[waiting] == "resent"
    job = _get(settings, lost)
    assert job.state == "failed" and job.error_code == "lost" and "submit it again" in (job.error or "")
    with session_scope(db) as s:
        messages = [e.message for e in s.query(JobEvent).filter_by(job_id=lost).order_by(JobEvent.seq)]
    assert any("re-sent" in (m or "") for m in messages) and "submit it again" in (messages[-1] or "")


def test_sweep_removes_only_abandoned_staging_files(tmp_path: Path) -> None:
    from app.core.sweeper import sweep_staging

    old, live = tmp_path / "upload-a.part", tmp_path / "upload-b.part"
    old.write_bytes(b"x")
    live.write_bytes(b"y")
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert sweep_staging(tmp_path, 60) == {old.name: "stale staging file removed"}
    assert not old.exists() and live.exists()
    assert sweep_staging(tmp_path / "absent", 60) == {}
