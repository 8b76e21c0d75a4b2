"""Layers: what each part of the code may import, and what each extra of pyproject.toml installs.

    app/core      settings, database, blob store, job state, broker: what the API and the worker share
    app/api       HTTP only (FastAPI app, routes, uploads, metrics, dashboard)
    worker/       Celery tasks and the sandbox: app.core, never app.api
    pruning_core  the library: nothing of the service

The API process never loads torch, onnx or the worker, and the api extra does not install them.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.service.conftest import ROOT

HEAVY = ("torch", "onnx", "onnxruntime", "onnxscript")
FIRST_PARTY = frozenset({"app", "worker", "client", "pruning_core", "migrations", "tests", "bench"})
PROJECT = "spa-service"


# -- static: the import statements of every module --------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, package: str | None = None) -> Iterator[tuple[str, bool, int]]:
    """(module, runs when the module is imported, line) for every import in the file. ``from a
    import b`` yields both ``a`` and ``a.b`` (b may be a submodule); relative imports are resolved
    against ``package`` (default: the file's package in the repository)."""
    if package is None:
        package = ".".join(path.relative_to(ROOT).parts[:-1])

    def walk(node: ast.AST, at_import: bool) -> Iterator[tuple[str, bool, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, at_import, child.lineno
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    anchor = parts[: len(parts) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                yield base, at_import, child.lineno
                for alias in child.names:
                    yield f"{base}.{alias.name}", at_import, child.lineno
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                yield from walk(child, False)
            else:
                yield from walk(child, at_import)

    yield from walk(ast.parse(path.read_text(), str(path)), True)


def _violations(folder: str, forbidden: tuple[str, ...], *, at_import_only: bool = False) -> list[str]:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no modules under {folder}"
    found = []
    for path in files:
        for module, at_import, line in _imports(path):
            if at_import_only and not at_import:
                continue
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return sorted(set(found))


def test_app_never_imports_the_worker() -> None:
    assert _violations("app", ("worker",)) == []


def test_core_never_imports_the_api() -> None:
    assert _violations("app/core", ("app.api",)) == []


def test_worker_never_imports_the_api() -> None:
    assert _violations("worker", ("app.api",)) == []


def test_app_imports_no_model_library_at_module_level() -> None:
    assert _violations("app", HEAVY, at_import_only=True) == []


def test_library_imports_nothing_of_the_service() -> None:
    assert _violations("pruning_core", ("app", "worker", "client")) == []


def test_the_checker_sees_lazy_relative_and_submodule_imports(tmp_path: Path) -> None:
    """The walk above must not miss the forms that would hide a dependency."""
    src = tmp_path / "probe.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "from app import api\n"
        "from . import queue\n"
        "from ..api.routes import jobs\n"
        "if TYPE_CHECKING:\n    import torch\n"
        "class C:\n    import numpy\n"
        "    def f(self):\n        import onnx\n"
    )
    found = {(m, at) for m, at, _ in _imports(src, package="app.core")}
    assert ("app.api.routes.jobs", True) in found and ("numpy", True) in found
    assert {("app.api", True), ("app.core.queue", True), ("torch", False), ("onnx", False)} <= found


# -- at run time: what each process loads ------------------------------------------------------


def _loaded(statement: str, tmp_path: Path, blocked: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Run ``statement`` in a fresh interpreter; the modules it loaded beyond interpreter start."""
    code = (
        "import json, sys\n"
        f"for name in {blocked!r}:\n    sys.modules.setdefault(name, None)\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "print(json.dumps({'before': sorted(before), 'after': sorted(m for m in sys.modules if sys.modules[m])}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPA_")}
    env.update(SPA_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


API_PROCESS = "import app.api.main\napp.api.main.app.openapi()"
WORKER_PROCESS = "import worker.tasks"
CLIENT_PROCESS = (
    "import client, client.cli\nclient.cli.build_parser().parse_args(['submit', 'm.onnx', '--flops', '0.5'])"
)


def test_api_process_loads_no_model_library_and_no_worker(tmp_path: Path) -> None:
    after = _loaded(API_PROCESS, tmp_path)["after"]
    bad = sorted(m for m in after if m.split(".")[0] in (*HEAVY, "worker"))
    assert bad == []


def test_worker_process_loads_no_http_layer(tmp_path: Path) -> None:
    after = _loaded(WORKER_PROCESS, tmp_path)["after"]
    bad = sorted(
        m for m in after if m == "app.api" or m.startswith("app.api.") or m.split(".")[0] == "fastapi"
    )
    assert bad == []


# -- the extras of pyproject.toml ------------------------------------------------------------


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(*extras: str, base: bool = True) -> list[Requirement]:
    """The requirements of the base install plus ``extras``, self-references (``spa-service[x]``)
    expanded, by the names pyproject.toml lists (no network, nothing installed is consulted)."""
    project = _project()
    optional = project["optional-dependencies"]
    out: list[Requirement] = [Requirement(r) for r in project["dependencies"]] if base else []
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra in optional, f"no extra [{extra}] in pyproject.toml"
        for text in optional[extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == PROJECT:
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def names(reqs: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


def _installed_closure(reqs: list[Requirement]) -> set[str]:
    """Distributions the requirements pull in, through the metadata of what is installed here."""
    seen: set[str] = set()
    todo = [(r.name, frozenset(r.extras)) for r in reqs]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            seen.add(key)  # not installed here: listed, but nothing to follow
            continue
        if key in seen and not extras:
            continue
        seen.add(key)
        for text in requires:
            req = Requirement(text)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return seen


HEAVY_DISTS = {canonicalize_name(n) for n in HEAVY}


def test_api_extra_installs_no_model_library() -> None:
    listed = names(requirements("api"))
    assert {"fastapi", "uvicorn", "sqlalchemy", "celery", "numpy"} <= listed
    assert listed & HEAVY_DISTS == set()
    assert _installed_closure(requirements("api")) & HEAVY_DISTS == set()


def test_client_base_install_is_small() -> None:
    base = names(requirements())
    assert base == names(requirements("client")) == {"httpx"}


def test_worker_and_server_extras() -> None:
    worker, api = names(requirements("worker")), names(requirements("api"))
    assert HEAVY_DISTS <= worker
    assert names(requirements("core", base=False)) <= worker & api
    assert not {"fastapi", "uvicorn"} & worker  # the worker runs no HTTP server
    assert names(requirements("server")) == worker | api


def _not_installed_by(*extras: str) -> tuple[str, ...]:
    """Top-level modules of the distributions installed here that ``extras`` would not install."""
    closure = _installed_closure(requirements(*extras))
    return tuple(
        sorted(
            top
            for top, dists in md.packages_distributions().items()
            if top not in FIRST_PARTY
            and top not in sys.stdlib_module_names
            and not {canonicalize_name(d) for d in dists} & closure
        )
    )


@pytest.mark.parametrize(
    "statement,extras",
    [(API_PROCESS, ("api",)), (WORKER_PROCESS, ("worker",)), (CLIENT_PROCESS, ())],
    ids=["api", "worker", "client"],
)
def test_each_extra_is_enough_for_its_process(
    statement: str, extras: tuple[str, ...], tmp_path: Path
) -> None:
    """The process runs with every module its extra would not install made unimportable (optional
    imports then fall back, as they would in an image built with only that extra)."""
    after = _loaded(statement, tmp_path, blocked=_not_installed_by(*extras))["after"]
    if not extras:  # the base install: the client talks HTTP and loads nothing of the server side
        assert not [m for m in after if m.split(".")[0] in ("app", "worker", "pruning_core")]


# -- the CLI without the library ----------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["prune", "m.onnx", "-o", "out.onnx", "--flops", "0.5"], ["analyze", "m.onnx"]]
)
def test_local_commands_without_the_library_name_the_extra(command: list[str], tmp_path: Path) -> None:
    code = (
        "import sys\n"
        f"for name in {HEAVY!r}:\n    sys.modules[name] = None\n"
        "from client.cli import main\n"
        f"raise SystemExit(main({command!r}))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr == "spa: error: local pruning needs the worker extra: pip install 'spa-service[worker]'\n"
    assert not (tmp_path / "out.onnx").exists()
