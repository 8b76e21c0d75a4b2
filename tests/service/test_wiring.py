"""Wiring: migrations on both databases, a Celery ping through real Redis, the API process free of
torch/onnx, and the compose file / Dockerfile running only commands the package provides."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from app.core.config import Settings
from tests.service.conftest import ROOT, RUN, Backend, WorkerProc, fresh_database
from tests.service.test_layers import names, requirements

HEAVY = ("torch", "onnx", "onnxruntime", "onnxscript", "onnx_ir")


@pytest.mark.parametrize("stage", ["import", "validate-a-job"])
def test_api_process_never_imports_torch_or_onnx(stage: str) -> None:
    """Importing the app, and validating a job body the way POST /v1/jobs does, loads no torch/onnx."""
    code = (
        "import sys, app.api.main\n"
        "app.api.main.app.openapi()\n"
        "if sys.argv[1] == 'validate-a-job':\n"
        "    from app.api.schemas import JobCreate\n"
        "    JobCreate.model_validate({'model_id': 'x', 'spec': {'target': {'flops': 0.5}, 'criterion': 'l1'}})\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m in ('worker.tasks', 'pruning_core.api'))\n"
        "assert not bad, bad[:10]\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, stage], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_migrations_match_models(backend: Backend) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.core.db.models import Base
    from app.core.db.session import get_engine

    with get_engine(backend.base.database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], diff
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0004"
        if conn.dialect.name == "sqlite":
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert conn.execute(sa.text("PRAGMA busy_timeout")).scalar_one() >= 5000


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_migrations_up_down_up(kind: str, tmp_path: Path) -> None:
    from alembic import command

    from app.core.db.migrate import alembic_config

    with fresh_database(kind, tmp_path) as url:
        cfg = alembic_config(url)
        command.upgrade(cfg, "head")
        command.downgrade(cfg, "base")
        engine = sa.create_engine(url)
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        command.upgrade(cfg, "head")
        assert {"api_keys", "models", "datasets", "jobs", "job_events"} <= set(
            sa.inspect(engine).get_table_names()
        )
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_celery_ping_through_redis(backend: Backend, tmp_path: Path) -> None:
    from app.core.queue import make_celery

    settings = backend.settings(f"ping{RUN}")
    assert settings.broker_url.startswith("redis://")
    worker = WorkerProc(settings, tmp_path / "ping.log", f"ping-{RUN}")
    try:
        app = make_celery(settings)
        replies = app.control.ping(timeout=5.0)
        names = {name for reply in replies for name in reply}
        assert any(name.startswith(f"ping-{RUN}@") for name in names), replies
    finally:
        worker.stop()


def test_settings_guard_time_limits() -> None:
    with pytest.raises(ValueError, match="visibility_timeout"):
        Settings(task_soft_time_limit=10, task_time_limit=20, visibility_timeout=15)
    with pytest.raises(ValueError, match="soft"):
        Settings(task_soft_time_limit=30, task_time_limit=20, visibility_timeout=100)


def test_celery_config() -> None:
    from app.core.queue import make_celery

    s = Settings(
        broker_url="redis://127.0.0.1:6379/0",
        visibility_timeout=5000,
        task_time_limit=4000,
        task_soft_time_limit=3900,
    )
    conf = make_celery(s).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_acks_late and conf.worker_prefetch_multiplier == 1 and conf.task_reject_on_worker_lost
    assert (
        conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit > conf.task_soft_time_limit
    )
    assert {q.name for q in conf.task_queues} == {"cpu", "gpu"}
    assert {q.routing_key for q in conf.task_queues} == {"cpu", "gpu"}  # gpu jobs really reach gpu workers


# -- deployment files ----------------------------------------------------------------------------


def _check_command(cmd: list[str], target: str) -> None:
    """The command a container of the image ``target`` (a Dockerfile stage named after the extra it
    installs) runs exists in the package, parses, and has its dependencies in that extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = names(requirements(target))
    exe = cmd[0]
    if exe == "spa":
        assert project["scripts"]["spa"] == "client.cli:main"
        from client.cli import build_parser

        args = build_parser().parse_args(cmd[1:])  # SystemExit on an unknown command
        if args.command in ("db", "admin"):
            assert {"sqlalchemy", "alembic", "pydantic-settings"} <= installed
    elif exe == "uvicorn":
        assert "uvicorn" in installed
        module, _, attr = cmd[1].partition(":")
        assert hasattr(importlib.import_module(module), attr)
    elif exe == "celery":
        assert "celery" in installed and {"torch", "onnx", "onnxruntime"} <= installed
        target_module = cmd[cmd.index("-A") + 1]
        from celery import Celery

        assert isinstance(importlib.import_module(target_module).app, Celery)
        assert cmd[cmd.index("-A") + 2] == "worker"
        queues = set(cmd[cmd.index("-Q") + 1].split(","))
        defaults = Settings()
        assert queues <= {defaults.queue_cpu, defaults.queue_gpu}
    else:
        raise AssertionError(f"unknown command {cmd}")


def test_compose_runs_only_package_commands() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "worker", "gpu-worker", "redis", "postgres", "minio", "migrate"} <= set(services)
    assert services["gpu-worker"]["profiles"] == ["gpu"]
    # Flower is optional, loopback-only, and watches the same broker the workers use
    assert services["flower"]["profiles"] == ["flower"] and services["flower"]["ports"][0].startswith("127.0.0.1:")
    assert f"--broker={compose['x-spa-env']['SPA_BROKER_URL']}" in services["flower"]["command"]
    ours = {name: s for name, s in services.items() if "build" in s}
    assert {"api", "worker", "gpu-worker", "migrate"} <= set(ours)
    targets = {name: s["build"]["target"] for name, s in ours.items()}
    assert targets == {"api": "api", "migrate": "api", "worker": "worker", "gpu-worker": "worker"}
    fields = set(Settings.model_fields)
    for name, service in ours.items():
        _check_command(service["command"], targets[name])
        for var in service["environment"]:
            if var.startswith("SPA_"):
                assert var[4:].lower() in fields, f"{name}: {var} is no setting"
    assert services["gpu-worker"]["command"][services["gpu-worker"]["command"].index("-Q") + 1] == "gpu"


def _dockerfile_stages() -> dict[str, str]:
    """Stage name -> its lines (``FROM ... AS name`` up to the next FROM)."""
    stages: dict[str, str] = {}
    name = None
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            name = line.split()[-1] if " AS " in line else line.split()[1]
            stages[name] = ""
        elif name is not None:
            stages[name] += line + "\n"
    return stages


def test_dockerfile_targets_install_their_extra() -> None:
    stages = _dockerfile_stages()
    assert {"api", "worker", "source"} <= set(stages)
    assert "pip install '.[api]'" in stages["api"] and "torch" not in stages["api"].replace("no torch", "")
    assert "pip install '.[worker]'" in stages["worker"] and "torch==${TORCH_VERSION}" in stages["worker"]
    for target in ("api", "worker"):
        assert "COPY --from=source " in stages[target]
        cmd_line = next(line for line in stages[target].splitlines() if line.startswith("CMD "))
        _check_command(yaml.safe_load(cmd_line[4:]), target)
    for copied in ("pruning_core", "app", "worker", "client", "migrations", "alembic.ini"):
        assert f"COPY {copied} " in stages["source"]
