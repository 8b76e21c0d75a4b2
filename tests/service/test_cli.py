"""The `spa` command line against a live server and worker; exit codes 0 / 1 / 2, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from client.cli import main
from tests.service.conftest import ROOT


@pytest.fixture
def cli_env(live_server: str, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SPA_SERVER", live_server)
    monkeypatch.setenv("SPA_API_KEY", auth["Authorization"].split(" ", 1)[1])
    return live_server


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_is_fast_and_light() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); from client.cli import build_parser; "
        "h = build_parser().format_help(); "
        "assert 'torch' not in sys.modules and 'onnx' not in sys.modules and 'app' not in sys.modules, sorted(sys.modules); "
        "print(h); print(time.perf_counter() - t)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for command in (
        "serve",
        "submit",
        "status",
        "wait",
        "download",
        "jobs",
        "models",
        "datasets",
        "groups",
        "admin",
        "db",
        "prune",
        "analyze",
    ):
        assert command in r.stdout
    assert float(r.stdout.strip().splitlines()[-1]) < 1.0


@pytest.mark.parametrize(
    "argv",
    [["submit"], ["submit", "m.onnx", "--flops", "1.5"], ["submit", "m.onnx", "--flops", "x"], ["nope"],
     ["submit", "m.onnx", "--flops", "0.5", "--params", "0.5"], ["admin"], ["admin", "keys"],
     ["admin", "keys", "list", "--data-dir", "d", "--database-url", "sqlite://"], ["groups"]],
)  # fmt: skip
def test_usage_errors_exit_2_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_input_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_env: str) -> None:
    code, _, err = run(["submit", str(tmp_path / "missing.onnx")], capsys)
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1
    text = tmp_path / "model.onnx"
    text.write_text("not a model at all")
    code, _, err = run(["submit", str(text), "--flops", "0.5"], capsys)
    assert code == 2 and "422" in err and "Traceback" not in err
    code, _, err = run(["status", "f" * 32], capsys)
    assert code == 2 and "404" in err
    code, _, err = run(["submit", str(text), "--server", "http://127.0.0.1:1"], capsys)
    assert code == 2 and "cannot reach" in err and len(err.strip().splitlines()) == 1


def test_submit_wait_download(
    zoo: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_env: str
) -> None:
    out_dir = tmp_path / "out"
    code, out, err = run(
        ["submit", str(zoo["tiny"]), "--flops", "0.5", "--criterion", "l1", "--download", str(out_dir)],
        capsys,
    )
    assert code == 0, err
    job_id = out.strip().splitlines()[-1]
    assert "succeeded" in err and "%" in err  # the progress bar went to stderr
    assert (out_dir / "pruned.onnx").stat().st_size > 0 and json.loads((out_dir / "report.json").read_text())
    code, out, _ = run(["status", job_id], capsys)
    assert code == 0 and json.loads(out)["state"] == "succeeded"
    code, out, _ = run(["wait", job_id], capsys)
    assert code == 0 and json.loads(out)["macs_after"] < json.loads(out)["macs_before"]
    code, out, _ = run(["download", job_id, str(tmp_path / "again"), "--name", "report.json"], capsys)
    assert code == 0 and [p.name for p in (tmp_path / "again").iterdir()] == ["report.json"]
    code, out, _ = run(["events", job_id], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split()[0] == "1" and "succeeded" in lines[-1]
    assert any(" stage " in line and "verify" in line for line in lines), out
    code, followed, _ = run(["events", job_id, "--follow", "--interval", "0.1"], capsys)
    assert code == 0 and followed == out  # an ended job: the same lines, then the exit of `wait`
    code, out, _ = run(["jobs"], capsys)
    assert code == 0 and job_id in out
    code, out, _ = run(["models"], capsys)
    assert code == 0 and "tiny.onnx" in out


def test_failed_job_exit_1(
    zoo: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_env: str
) -> None:
    # A valid model and spec the worker cannot satisfy: nothing may be pruned, yet 50 % must go.
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"ignore": ["*"], "criterion": "l2"}))
    code, out, err = run(
        ["submit", str(zoo["tiny"]), "--spec", str(spec), "--flops", "0.5", "--wait", "--timeout", "60"],
        capsys,
    )
    assert code == 1, err
    job_id = out.strip().splitlines()[-1]
    assert "failed" in err.splitlines()[-1] and "reachable" in err.splitlines()[-1]
    assert "  ratio" not in err and "verified:" not in err  # no result table for a failed job
    code, _, err = run(["status", job_id], capsys)
    assert code == 1
    code, out, err = run(["events", job_id, "--follow"], capsys)
    last = out.strip().splitlines()[-1]
    assert code == 1 and "reachable" in err and " state " in last and "reachable" in last
    code, _, err = run(["download", job_id, str(tmp_path)], capsys)
    assert code == 1 and "nothing to download" in err and "reachable" in err  # exit 1: the job failed


def test_admin_create_key_and_db_upgrade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'admin.db'}"
    # before `spa db upgrade`: a sentence that says to run it, no driver exception, no file made
    code, out, err = run(["admin", "create-key", "ci-bot", "--database-url", url], capsys)
    assert code == 2 and "spa db upgrade" in err and "OperationalError" not in err and not out
    assert not (tmp_path / "admin.db").exists()
    empty = tmp_path / "empty.db"
    sa.create_engine(f"sqlite:///{empty}").connect().close()  # a database without our tables
    code, _, err = run(["admin", "keys", "list", "--database-url", f"sqlite:///{empty}"], capsys)
    assert code == 2 and "has no SPA tables yet" in err and "Traceback" not in err
    code, _, err = run(["db", "upgrade", "--database-url", url], capsys)
    assert code == 0, err
    code, out, err = run(["admin", "create-key", "ci-bot", "--database-url", url], capsys)
    assert code == 0 and out.startswith("spa_") and "shown only now" in err
    key = out.strip()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT name, key_hash FROM api_keys")).all()
    engine.dispose()
    assert [r[0] for r in rows] == ["ci-bot"] and key not in rows[0][1]  # only the hash is stored
    code, _, err = run(["admin", "create-key", "  ", "--database-url", url], capsys)
    assert code == 2


def test_client_library(live: Any, auth: dict[str, str], zoo: dict[str, Path]) -> None:
    from client import SpaClient, SpaError

    client = SpaClient("http://testserver", auth["Authorization"].split(" ", 1)[1], http=live)
    model = client.upload_model(zoo["tiny"])
    job = client.submit(model["id"], {"target": {"flops": 0.5}}, idempotency_key="lib-1")
    assert client.submit(model["id"], {"target": {"flops": 0.5}}, idempotency_key="lib-1")["id"] == job["id"]
    final = client.wait(job["id"], timeout=120)
    assert final["state"] == "succeeded"
    assert [j["id"] for j in client.iter_jobs() if j["id"] == job["id"]] == [job["id"]]
    with pytest.raises(SpaError) as e:
        client.submit(model["id"], {"criterion": "nope"})
    assert e.value.status == 422 and "criterion" in str(e.value)


def _external(zoo: dict[str, Path], folder: Path) -> Path:
    """The tiny zoo model saved as torch 2.x exports by default: graph and model.onnx.data."""
    import onnx

    folder.mkdir()
    m = onnx.load(zoo["tiny"])
    onnx.save(m, folder / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    return folder / "model.onnx"


def test_submit_sends_external_data_with_the_model(
    zoo: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_env: str
) -> None:
    src = _external(zoo, tmp_path / "export")
    code, out, err = run(["submit", str(src), "--flops", "0.5", "--criterion", "l1", "--download",
                          str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "pruned.onnx").stat().st_size > 0


def test_bundle_finds_data_files_and_refuses_paths_outside(zoo: dict[str, Path], tmp_path: Path) -> None:
    import zipfile

    import onnx

    from client.bundle import BundleError, bundle, data_files

    assert data_files(zoo["tiny"]) == [] and bundle(zoo["tiny"]) == zoo["tiny"]
    src = _external(zoo, tmp_path / "export")
    assert data_files(src) == ["model.onnx.data"]
    with zipfile.ZipFile(bundle(src, tmp_path)) as z:
        assert sorted(z.namelist()) == ["model.onnx", "model.onnx.data"]
    m = onnx.load(src, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../elsewhere.data"
    onnx.save(m, tmp_path / "export" / "escape.onnx")
    with pytest.raises(BundleError, match="outside its folder"):
        data_files(tmp_path / "export" / "escape.onnx")
    (tmp_path / "export" / "model.onnx.data").unlink()
    with pytest.raises(BundleError, match="not next to it"):
        data_files(src)


def test_admin_lists_and_revokes_keys_refused_at_once(
    backend: Any, api: Any, new_key: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url = backend.base.database_url
    keep, gone = new_key("keeper"), new_key("leaver")
    assert api.get("/v1/jobs", headers=gone).status_code == 200
    code, out, err = run(["admin", "list-keys", "--database-url", url], capsys)
    assert code == 0, err
    lines = [ln.split() for ln in out.splitlines()]
    assert lines[0] == ["ID", "NAME", "CREATED", "REVOKED"]
    assert {"keeper", "leaver"} <= {ln[1] for ln in lines[1:]} and "spa_" not in out  # never the keys
    code, _, err = run(["admin", "revoke-key", "leaver", "--database-url", url], capsys)
    assert code == 0 and "revoked" in err
    assert api.get("/v1/jobs", headers=gone).status_code == 401  # at once: no restart, no cache
    assert api.get("/v1/jobs", headers=keep).status_code == 200
    code, out, _ = run(["admin", "list-keys", "--database-url", url], capsys)
    assert next(ln for ln in out.splitlines() if " leaver " in f" {ln} ").split()[-1] != "-"
    code, _, err = run(["admin", "revoke-key", "nobody", "--database-url", url], capsys)
    assert code == 2 and "no key" in err and "Error" not in err


def test_version_cancel_and_a_closed_pipe(
    zoo: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_env: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("spa ")
    code, out, err = run(["submit", str(zoo["tiny"]), "--flops", "0.5", "--criterion", "l1", "--wait"], capsys)
    assert code == 0, err
    job_id = out.strip().splitlines()[0]
    code, out, err = run(["cancel", job_id], capsys)  # it had finished: says how, exit 1
    assert code == 1 and json.loads(out)["state"] == "succeeded" and "already ended: succeeded" in err
    code, _, err = run(["cancel", "0" * 32], capsys)
    assert code == 2 and "404" in err
    # `spa jobs | head -0`: the reader is gone before anything is written; no traceback, exit 0
    r, w = os.pipe()
    os.close(r)
    monkeypatch.setattr("sys.stdout", os.fdopen(w, "w", buffering=1))
    assert main(["jobs"]) == 0
