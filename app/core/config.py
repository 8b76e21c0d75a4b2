"""Service settings (pydantic-settings, environment variables with the ``SPA_`` prefix).

One object for the API, the worker and the CLI, so that both processes of a deployment read the
same database, broker and storage from the same variables.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pruning_core.ir import limits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPA_", extra="ignore")

    # Embedded defaults: everything lives under data_dir, nothing else to install.
    data_dir: Path = Path(".spa")
    database_url: str = ""  # "" -> sqlite:///<data_dir>/spa.db
    broker_url: str = ""  # "" -> sqla+sqlite:///<data_dir>/broker.db (needs no server)

    storage: Literal["local", "s3"] = "local"
    storage_dir: Path | None = None  # local store; None -> <data_dir>/blobs
    s3_bucket: str = "spa-artifacts"
    s3_endpoint_url: str | None = None  # MinIO / moto; None -> AWS
    s3_region: str = "us-east-1"
    s3_prefix: str = ""
    # S3 only: > 0 answers an artifact GET with a 307 to a URL presigned for this many seconds, so
    # the bytes go from the bucket to the client instead of through the API; 0 streams them.
    s3_presign_ttl_s: int = Field(0, ge=0, le=7 * 24 * 3600)
    # where clients reach the bucket, when that differs from the API's endpoint (MinIO in compose)
    s3_public_endpoint_url: str | None = None

    max_upload_bytes: int = Field(2 * 1024**3, ge=1)  # 2 GiB; 413 above
    auth_disabled: bool = False  # only honoured for loopback clients (see app/api/deps.py)
    # .pt2 files are programs (loaded only in the worker's sandbox); None -> on only without auth
    # (the loopback embedded mode), off when API keys are in use. See SECURITY.md.
    allow_pytorch_uploads: bool | None = None
    # /metrics needs an API key when auth is on; true serves it to anyone who can reach it (for
    # a scraper on a private network without credentials).
    metrics_public: bool = False

    # Bounded inputs (SECURITY.md): archives, forms and specs are refused before they cost much.
    max_unpacked_bytes: int = Field(limits.DEFAULT_MAX_UNPACKED, ge=1)  # a zip / npz may unpack to at most this
    max_zip_ratio: float = Field(limits.DEFAULT_MAX_ZIP_RATIO, gt=1)  # unpacked / packed; deflate of real weights is ~1.1
    max_form_fields: int = Field(16, ge=0)  # non-file multipart fields per request
    max_spec_bytes: int = Field(64 * 1024, ge=256)  # a job's spec as JSON

    # The sandbox a worker runs each model in (worker/sandbox.py): a child process with limits.
    sandbox: bool = True  # off only for debugging: then the library runs inside the worker
    job_memory_bytes: int = Field(16 * 1024**3, ge=256 * 1024**2)  # address space of the child
    job_cpu_seconds: int = Field(4 * 3600, ge=10)  # CPU time of the child
    job_file_bytes: int = Field(32 * 1024**3, ge=1024**2)  # largest file the child may write
    sandbox_user: str = "nobody"  # the child drops to this user when the worker runs as root
    cancel_grace_s: float = Field(5.0, ge=0)  # a job still "cancelling" this long is killed

    # Worker log lines: "text" names the job in brackets, "json" writes one object per line with
    # a "job" / "model" field (worker/logs.py).
    log_format: Literal["text", "json"] = "text"

    # Celery. Queue names are settings so that tests (and tenants of one Redis) can isolate.
    queue_cpu: str = "cpu"
    queue_gpu: str = "gpu"
    broker_key_prefix: str = ""  # Redis only: namespace every broker key (shared Redis servers)
    task_soft_time_limit: int = Field(3 * 3600, ge=1)
    task_time_limit: int = Field(3 * 3600 + 300, ge=1)
    visibility_timeout: int = Field(4 * 3600, ge=1)
    # Recovery of jobs whose worker died (SIGKILL, OOM): a running job whose heartbeat is older
    # than heartbeat_stale_s is re-queued once, then failed (max_attempts runs in total).
    heartbeat_interval_s: float = Field(5.0, gt=0)
    heartbeat_stale_s: float = Field(60.0, gt=0)
    sweep_interval_s: float = Field(15.0, gt=0)
    # The API process sweeps too (app.core.sweeper): when the last worker dies, nobody else would
    api_sweeps: bool = True
    max_attempts: int = Field(2, ge=1, le=10)
    # A model still "validating" this long after its last validation started is re-sent (its task
    # was lost with a dead worker), within the same max_attempts.
    validation_stale_s: float = Field(1800.0, gt=0)
    # A job (or a model's validation) still queued this long while nothing runs on its queue had
    # its message lost (a broker restarted empty, a message consumed while the database was away):
    # it is re-sent once, then failed with the reason.
    queued_stale_s: float = Field(300.0, gt=0)
    # An upload or artifact staging file untouched this long belongs to a process that died
    # mid-transfer (an API restarted mid-upload): the sweeper removes it.
    staging_stale_s: float = Field(3600.0, gt=0)
    # Retention: finished jobs older than this many days (their events and artifacts with them), and
    # models and datasets uploaded before then that no job refers to, are deleted by the sweeper.
    # 0 keeps everything forever.
    retention_days: float = Field(0.0, ge=0)
    # How long a task keeps retrying (with backoff) when the database is away, before it gives up
    # and leaves the job to the sweeper.
    db_retry_s: float = Field(300.0, ge=0)

    @model_validator(mode="after")
    def _fill_and_check(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'spa.db').as_posix()}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{(self.data_dir / 'broker.db').as_posix()}"
        if self.storage_dir is None:
            self.storage_dir = self.data_dir / "blobs"
        # A message must stay invisible longer than the task may run, or the broker hands it to a
        # second worker while the first is still busy; the soft limit must fire before the hard one.
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("task_soft_time_limit must be below task_time_limit")
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError("visibility_timeout must be above task_time_limit")
        if self.heartbeat_stale_s <= self.heartbeat_interval_s:
            raise ValueError("heartbeat_stale_s must be above heartbeat_interval_s")
        return self

    @property
    def pytorch_uploads_allowed(self) -> bool:
        """Explicit setting, else on only for the no-auth (loopback) mode: a .pt2 is a program."""
        if self.allow_pytorch_uploads is not None:
            return self.allow_pytorch_uploads
        return self.auth_disabled


def as_environment(settings: Settings) -> dict[str, str]:
    """This process's environment with SPA_* replaced by ``settings``: what makes a subprocess (a
    worker, an API started by a test or a bench) see the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPA_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"SPA_{name.upper()}"] = str(value)
    return env


@lru_cache
def get_settings() -> Settings:
    return Settings()
