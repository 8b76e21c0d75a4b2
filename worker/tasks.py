"""Celery tasks: validate an uploaded model, run a pruning job.

The library (pruning_core.api, which pulls in torch and onnx) is imported inside the tasks, so
that importing this module stays cheap and the API never loads it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from app.core import jobstate, sweeper, workers
from app.core.blobs import release_if_unused
from app.core.config import Settings
from app.core.db.models import Dataset, Job, Model, utcnow
from app.core.db.session import DB_AWAY, get_engine, session_scope
from app.core.queue import TASK_RUN_JOB, TASK_VALIDATE_MODEL
from app.core.storage import BlobStore, make_store
from pruning_core.frontends.zipsafe import UnsafeZip, safe_extract
from worker import latency_cache, logs, sandbox, workdirs
from worker.celery_app import celery_app
from worker.progress import ProgressReporter
from worker.sandbox import SandboxFailure
from worker.sandbox_child import execute

log = logging.getLogger("spa.worker")
ARTIFACT_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _settings() -> Settings:
    return celery_app.conf.spa_settings


T = TypeVar("T")


def with_db(settings: Settings, what: str, fn: Callable[[], T]) -> T:
    """``fn()`` (a database step), retried with backoff (0.5 s doubling to 15 s) while the
    database is away, for up to ``settings.db_retry_s``. The message stays unacked meanwhile, so a
    task is never acknowledged and dropped over an outage; past the limit the error propagates and
    the sweeper recovers the job (app.core.sweeper)."""
    deadline = time.monotonic() + settings.db_retry_s
    delay = 0.5
    while True:
        try:
            return fn()
        except DB_AWAY as e:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database unavailable (%s); retrying in %g s", what, _words(e)[:120], delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: Any) -> None:
    logs.install(logger, _settings().log_format)


@worker_process_init.connect
def _fresh_engines(**_: Any) -> None:
    # A forked pool child must not share the parent's pooled DB connections (sockets).
    get_engine.cache_clear()
    # A pool child that replaces a killed one (OOM) clears the folders its predecessor left.
    _remove_stale_workdirs()


def _remove_stale_workdirs() -> None:
    try:
        workdirs.remove_stale()
    except Exception:  # never keep a worker from starting over a cleanup
        log.warning("removing stale work folders failed", exc_info=True)


def _run_model_op(settings: Settings, workdir: Path, request: dict[str, Any], *,
                  progress: Callable[[str, float, str | None], None] | None = None,
                  poll: Callable[[], None] | None = None) -> dict[str, Any]:
    """``analyze`` / ``prune`` on the files in ``workdir``: in the sandboxed child, or in this
    process when the sandbox is off. Raises SandboxFailure with the job's error code."""
    if settings.sandbox:
        cache = settings.data_dir / "latency-cache"
        if request["op"] == "prune":
            latency_cache.seed(cache, workdir / "run")
        try:
            return sandbox.run(workdir, request, sandbox.Policy.of(settings), progress=progress, poll=poll)
        finally:
            if request["op"] == "prune":
                latency_cache.collect(cache, workdir / "run")
    from pruning_core.errors import Cancelled

    result = execute(request, workdir, progress, passthrough=(Cancelled, SoftTimeLimitExceeded))
    return sandbox.check(result, request["op"])


def materialize_model(store: BlobStore, model: Model, workdir: Path, settings: Settings) -> Path:
    """Fetch the model blob to a real path; unpack a zip (model.onnx + external data) safely."""
    if model.format != "zip":
        path = workdir / f"model.{model.format}"
        store.fetch(model.sha256, path)
        return path
    archive = workdir / "upload.zip"
    store.fetch(model.sha256, archive)
    files = safe_extract(archive, workdir / "unzipped", max_unpacked=settings.max_unpacked_bytes,
                         max_ratio=settings.max_zip_ratio)
    archive.unlink()
    onnx_files = sorted(
        (p for p in files if p.suffix == ".onnx"), key=lambda p: (len(p.parts), p.name != "model.onnx")
    )
    if not onnx_files:
        raise UnsafeZip("the zip holds no .onnx file")
    return onnx_files[0]


def _claim_validation(settings: Settings, model_id: str) -> Model | None:
    """Count a validation run; a model whose validations keep dying is declared invalid."""
    with session_scope(settings.database_url) as session:
        took = session.execute(
            sa.update(Model)
            .where(Model.id == model_id, Model.state == "validating", Model.attempts < settings.max_attempts)
            .values(attempts=Model.attempts + 1, updated_at=utcnow())
        ).rowcount  # type: ignore[attr-defined]
        model = session.get(Model, model_id)
        if model is None or model.state != "validating":
            return None
        if took != 1:
            model.state = "invalid"
            model.reason = (
                f"validation did not finish in {model.attempts} attempt(s): the worker was killed "
                "(out of memory?) or lost while analysing this model"
            )
            session.flush()
            release_if_unused(session, make_store(settings), model.sha256)
            return None
        return model


@celery_app.task(name=TASK_VALIDATE_MODEL)
def validate_model(model_id: str) -> str:
    with logs.about(f"model {model_id}"):
        state = _validate(model_id)
        log.info("validation ended: %s", state)
        return state


def _validate(model_id: str) -> str:
    settings = _settings()
    store = make_store(settings)
    model = with_db(settings, f"model {model_id}", lambda: _claim_validation(settings, model_id))
    if model is None:
        return "skipped"
    workdir = workdirs.make("validate")
    state, reason, summary, groups = "invalid", None, None, None
    try:
        path = materialize_model(store, model, workdir / "in", settings)
        request = {"op": "analyze", "model": str(path.relative_to(workdir))}
        info = _run_model_op(settings, workdir, request)["info"]
        groups = info.pop("groups", None)
        summary, state = info, "ready"
    except UnsafeZip as e:
        reason = str(e)
    except SandboxFailure as e:  # the model's verdict, a limit, or a crash: an answer the user sees
        if e.code == "internal":
            log.warning("validation of model %s failed: %s", model_id, e.message)
        reason = e.message
    except SoftTimeLimitExceeded:
        reason = f"model analysis did not finish within the time limit of {settings.task_soft_time_limit} s"
    except Exception as e:  # a crash in the worker itself is still an answer the user must see
        log.exception("validation of model %s crashed", model_id)
        reason = f"internal error while analysing the model: {_words(e)}"
    finally:
        workdirs.remove(workdir)

    def write() -> str:
        with session_scope(settings.database_url) as session:
            row = session.get(Model, model_id)
            if row is None:
                return "gone"
            row.state, row.reason, row.summary, row.groups = state, reason, summary, groups
            session.flush()
            if state == "invalid":
                release_if_unused(session, store, model.sha256)
        return state

    return with_db(settings, f"model {model_id}", write)


class _Heartbeat(threading.Thread):
    """Keeps heartbeat_at fresh while the library works, even in a long step with no progress."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.settings, self.job_id = settings, job_id
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.settings.heartbeat_interval_s):
            try:
                with session_scope(self.settings.database_url) as session:
                    jobstate.heartbeat(session, self.job_id)
            except Exception:  # a missed beat is not fatal; the next one may pass
                log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)


def _store_artifacts(
    store: BlobStore, artifacts: dict[str, Path], limit: int, owner_uid: int | None
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, path in artifacts.items():
        if not name or not set(name) <= ARTIFACT_NAME_OK or name.startswith("."):
            raise ValueError(f"library returned an artifact with an unsafe name: {name!r}")
        staged = store.stage(limit)
        try:
            with sandbox.open_output(path, owner_uid) as fh:
                while chunk := fh.read(1024 * 1024):
                    staged.write(chunk)
            sha = staged.finish()
            store.put_file(staged.path, sha)
        finally:
            staged.discard()
        out[name] = {"sha256": sha, "size": staged.size}
    return out


class _JobLost(Exception):
    """The job left running / cancelling under us (swept as silent): stop, report nothing."""


def _job_watch(db: str, job_id: str) -> Callable[[], None]:
    """Polled while the child runs: a cancel request stops it even in a stage that reports no
    progress (the library cannot be trusted to call back, nor to be quick)."""
    from pruning_core.errors import Cancelled

    def check() -> None:
        try:
            with session_scope(db) as session:
                state = session.execute(sa.select(Job.state).where(Job.id == job_id)).scalar_one_or_none()
        except Exception:  # a database hiccup is no reason to kill the job; the next poll may pass
            log.warning("polling job %s failed", job_id, exc_info=True)
            return
        if state == "cancelling":
            raise Cancelled("cancelled by the user")
        if state != "running":
            raise _JobLost(f"job is {state}")

    return check


@celery_app.task(name=TASK_RUN_JOB)
def run_job(job_id: str) -> str:
    # Celery logs the task as "succeeded" whatever the job did; this line says how the job ended.
    with logs.about(f"job {job_id}"):
        outcome = _run(job_id)
        log.log(logging.WARNING if outcome not in ("succeeded", "cancelled") else logging.INFO,
                "job ended: %s", outcome)
        return outcome


def _run(job_id: str) -> str:
    settings = _settings()
    db = settings.database_url

    def take() -> jobstate.Claim:
        with session_scope(db) as session:
            got = jobstate.claim(
                session,
                job_id,
                _worker_name(),
                stale_before=jobstate.stale_cutoff(settings.heartbeat_stale_s),
                max_attempts=settings.max_attempts,
            )
            if not got.ok and got.reason == "job is cancelled":
                jobstate.add_event(session, job_id, "log", message="task received after cancel; not run")
            return got

    got = with_db(settings, f"job {job_id}", take)
    if not got.ok:
        return got.reason
    beat = _Heartbeat(settings, job_id)
    beat.start()
    workdir = workdirs.make("job")
    try:
        final = _run_claimed(settings, job_id, workdir)
    finally:
        beat.stop_event.set()
        workdirs.remove(workdir)
    return with_db(settings, f"job {job_id}", lambda: _record(db, job_id, final))


@dataclass
class _Final:
    """How a job ended. Written after its work folder is removed: once a job shows a final state,
    nothing of it (a copy of the model, artifacts) is left on the worker."""

    state: str  # succeeded | failed | cancelled | lost (no longer ours: nothing to write)
    message: str | None = None
    values: dict[str, Any] = field(default_factory=dict)


def _failed(error: str, code: str) -> _Final:
    return _Final("failed", error, {"error": error, "error_code": code})


def _record(db: str, job_id: str, final: _Final) -> str:
    if final.state == "lost":
        return "lost"
    with session_scope(db) as session:
        ok = jobstate.finish(session, job_id, final.state, message=final.message or final.state, **final.values)
    return final.state if ok or final.state != "succeeded" else "lost"


def _inputs(db: str, job_id: str) -> tuple[dict[str, Any], Model, Dataset | None, Dataset | None] | _Final:
    """The job's spec, model and datasets, or how it failed when one of them is unusable."""
    with session_scope(db) as session:
        job = session.get(Job, job_id)
        assert job is not None
        model = session.get(Model, job.model_id)
        assert model is not None
        if model.state == "invalid":
            return _failed(f"the model is invalid: {model.reason}", "invalid_model")
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        spec = dict(job.spec)
        eval_id = (spec.get("calibration") or {}).get("eval_dataset_id")
        eval_set = session.get(Dataset, eval_id) if eval_id else None
        if eval_id and (eval_set is None or eval_set.owner_id != job.owner_id):
            return _failed(f"the eval dataset {eval_id!r} does not exist", "invalid_data")
        return spec, model, dataset, eval_set


def _run_claimed(settings: Settings, job_id: str, workdir: Path) -> _Final:
    db = settings.database_url
    store = make_store(settings)
    reporter = ProgressReporter(settings, job_id)
    try:
        from pruning_core.errors import Cancelled
    except ImportError as e:
        return _failed(f"the pruning library is not installed on this worker: {e}", "internal")
    try:
        inputs = with_db(settings, f"job {job_id}", lambda: _inputs(db, job_id))
        if isinstance(inputs, _Final):
            return inputs
        spec, model, dataset, eval_set = inputs
        reporter("fetch", 0.0, "fetching the model")
        model_path = materialize_model(store, model, workdir / "in", settings)
        request: dict[str, Any] = {"op": "prune", "model": str(model_path.relative_to(workdir)),
                                   "spec": spec, "out": "out", "data": None}
        if dataset is not None:
            store.fetch(dataset.sha256, workdir / "in" / "data.npz")
            request["data"] = "in/data.npz"
        if eval_set is not None:
            store.fetch(eval_set.sha256, workdir / "in" / "eval.npz")
            request["eval_data"] = "in/eval.npz"
        reporter("fetch", 1.0, None)
        result = _run_model_op(settings, workdir, request, progress=reporter, poll=_job_watch(db, job_id))
        reporter("store", 0.0, "storing artifacts")
        owner = sandbox.sandbox_user(sandbox.Policy.of(settings)) if settings.sandbox else None
        paths = {name: sandbox.output_path(workdir, rel) for name, rel in result["artifacts"].items()}
        artifacts = _store_artifacts(
            store, paths, settings.max_upload_bytes * 4, owner.pw_uid if owner is not None else None
        )
        return _Final("succeeded", "succeeded", {
            "stage": "done", "progress": 1.0, "summary": _with_fidelity(result["summary"], result["report"]),
            "report": result["report"],
            "artifacts": artifacts,
        })
    except Cancelled:
        return _Final("cancelled", "cancelled while running")
    except _JobLost as e:
        log.warning("job %s stopped: %s (taken over after a silence)", job_id, e)
        return _Final("lost")
    except SandboxFailure as e:
        if e.code == "internal":
            log.error("job %s failed: %s", job_id, e.message)
        return _failed(e.message, e.code)
    except UnsafeZip as e:
        return _failed(str(e) or "unsafe zip", getattr(e, "code", "invalid_model"))
    except SoftTimeLimitExceeded:
        return _failed(f"time limit of {settings.task_soft_time_limit} s exceeded", "time_limit")
    except Exception as e:
        log.exception("job %s crashed", job_id)
        return _failed(f"internal error: {_words(e)}", "internal")


def _with_fidelity(summary: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """The job's summary with the fidelity of the result and where it was measured (the user's
    held-out or eval data, or synthetic inputs), before recovery too when recovery ran."""
    out = dict(summary)
    keys = ("inputs", "samples", "cosine", "top1_agreement", "accuracy")
    for name in ("fidelity", "fidelity_before_recovery"):
        if isinstance(report.get(name), dict):
            out[name] = {k: report[name].get(k) for k in keys}
    return out


# --- recovery of jobs whose worker died ---------------------------------------------------------


def sweep_once(settings: Settings) -> dict[str, str]:
    """One round of ``app.core.sweeper.sweep_once`` through this worker's Celery app."""
    return sweeper.sweep_once(settings, celery_app)


_sweeper: sweeper.Periodic | None = None


_beat: sweeper.Periodic | None = None


def _consumed_queues(consumer: Any, settings: Settings) -> list[str]:
    try:
        return sorted(q.name for q in consumer.task_consumer.queues)
    except AttributeError:  # another Celery layout: assume the default queues
        return [settings.queue_cpu, settings.queue_gpu]


@worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    global _sweeper, _beat
    settings = _settings()
    _remove_stale_workdirs()  # what a SIGKILLed predecessor (and its pool children) left behind
    _sweeper = sweeper.sweeper(settings, celery_app)
    _sweeper.start()
    name, queues = _worker_name(), _consumed_queues(sender, settings)  # the main process: same at shutdown

    def beat() -> None:  # this worker's row in `workers` (app.core.workers)
        with session_scope(settings.database_url) as session:
            workers.beat(session, name, queues)

    _beat = sweeper.Periodic(settings.heartbeat_interval_s, beat, "spa-worker-beat")
    try:
        beat()
    except Exception:
        log.warning("worker beat failed", exc_info=True)
    _beat.start()
    try:
        sweep_once(settings)  # a restarted worker recovers what its predecessor left at once
    except Exception:
        log.warning("initial sweep failed", exc_info=True)


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop_event.set()
    if _beat is not None:
        _beat.stop_event.set()
        try:
            with session_scope(_settings().database_url) as session:
                workers.leave(session, _worker_name())
        except Exception:
            log.warning("could not remove this worker's row", exc_info=True)


def _words(e: BaseException) -> str:
    """An exception's message for the job's reason (the log keeps the traceback), no class name."""
    return " ".join(str(e).split())[:400] or "no details were given"
