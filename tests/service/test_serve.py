"""`spa serve`, the embedded mode, as a user runs it: one command, SQLite, a local artifact dir, a
worker on a broker that needs no server; no auth on loopback only, announced at start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import ROOT, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPA_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid,ppid,pgid"], capture_output=True, text=True).stdout.split("\n")[
        1:
    ]
    rows = [tuple(map(int, line.split())) for line in out if line.strip()]
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp, _ in rows if pp in frontier} - found
        found |= frontier
    return found


def test_spa_serve_round_trip(tmp_path: Path, zoo: dict[str, Path]) -> None:
    from client import SpaClient

    port = free_port()
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "serve", "--port", str(port), "--data-dir", str(data)],
        cwd=tmp_path, env=_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url), 60, 0.3, "spa serve to be ready")
        banner = log.read_text()
        assert "authentication OFF (loopback clients only)" in banner and url in banner
        with SpaClient(url, api_key="") as client:
            model = client.upload_model(zoo["tiny"])
            job = client.submit(model["id"], {"target": {"flops": 0.5}, "criterion": "l1"})
            final = client.wait(job["id"], timeout=120)
            assert final["state"] == "succeeded", final
            paths = client.download(job["id"], tmp_path / "out")
        assert {p.name for p in paths} >= {"pruned.onnx", "report.json"}
        assert (data / "spa.db").exists() and (data / "broker.db").exists() and (data / "blobs").is_dir()
        access = (data / "access.log").read_text()  # one line per request, the terminal kept quiet
        assert '"POST /v1/jobs HTTP/1.1" 202' in access and f"GET /v1/jobs/{job['id']} HTTP/1.1\" 200" in access
        assert "GET /v1/jobs/" not in log.read_text()
        workers = _children(proc.pid)
        assert workers, "no worker process beside the API"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    # `spa serve` stops its worker before it exits: nothing is left running.
    alive = [p for p in workers if _alive(p)]
    assert not alive, f"worker processes left behind: {alive}"
    assert code == 0 and "stopping the worker" in log.read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_spa_serve_refuses_open_network_without_auth(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "client.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", str(tmp_path)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "without authentication" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "spa.db").exists()


def test_spa_serve_restarts_a_killed_worker(tmp_path: Path, zoo: dict[str, Path]) -> None:
    """SIGKILL of the embedded worker's main process: `spa serve` says so, starts a new worker, and
    jobs run again without restarting the server."""
    from client import SpaClient

    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, env=_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url), 60, 0.3, "spa serve to be ready")
        first = _worker_main(proc.pid)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: "restarting it" in log.read_text(), 30, 0.3, "the restart to be announced")
        wait_for(lambda: _worker_main(proc.pid, missing_ok=True) not in (None, first), 30, 0.3, "a new worker")
        with SpaClient(url, api_key="") as client:
            model = client.upload_model(zoo["tiny"])
            job = client.submit(model["id"], {"target": {"flops": 0.5}, "criterion": "l1"})
            assert client.wait(job["id"], timeout=120)["state"] == "succeeded"
        assert "worker exited (code -9)" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0


def _worker_main(serve_pid: int, missing_ok: bool = False) -> int | None:
    """The worker's main process: the direct child of `spa serve` running celery."""
    for pid in _children(serve_pid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[3]) == serve_pid and b"celery" in cmd and stat[2] != "Z":
            return pid
    if missing_ok:
        return None
    raise AssertionError("no worker process beside the API")
