"""API load: concurrent clients polling, listing and uploading at once (run by hand, not in CI).

    python -m bench.api_load --mode embedded       # `spa serve` in a temp dir (SQLite, its worker)
    python -m bench.api_load --mode production     # uvicorn --workers N, PostgreSQL, Redis
    python -m bench.api_load --mode both --write docs/reliability.md
    python -m bench.api_load --server URL --api-key KEY          # a server that is already up

``--clients`` (50) clients run for ``--seconds`` (30): ``--upload-share`` of them upload distinct
``--upload-mb`` (20) MB files (POST /v1/models) back to back, ``--list-share`` list (GET /v1/jobs and
GET /v1/models in turn), the rest poll one job (GET /v1/jobs/{id}), as fast as they can (closed loop)
or, with ``--poll-rate R``, at R requests/s together. Reported per request kind: requests/s, p50 and
p99 latency, errors (and how many were 5xx); for uploads the bytes sent and MB/s (10^6 bytes); the
resident memory (RSS) of the API processes (uvicorn's master and workers: the /proc tree) before, at
the peak of, and after the load; the CPU the API, the worker, the clients, PostgreSQL and the rest of
the machine used meanwhile; in production mode the PostgreSQL connections the API's pools opened.

The upload bodies are made in memory, not read from disk: one random buffer per client process, each
upload with its own 18 leading bytes (a different SHA-256, so the store cannot deduplicate them).
The clients use http.client over keep-alive connections in ``--client-procs`` processes: cheap
enough to leave the cores to the server (their share is reported).

Production mode creates its own PostgreSQL database (dropped afterwards), migrates it, creates an
API key, uses a Redis key prefix and queue names of its own, and starts ``uvicorn app.api.main:app
--workers N`` (and with ``--celery-worker`` one Celery worker) with SPA_* variables, as a
deployment would. ``--write FILE`` puts the figures in the "## Load" section of FILE (between
``<!-- load:begin -->`` and ``<!-- load:end -->``), leaving the rest of the file alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import multiprocessing as mp
import os
import platform
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import docsection
from bench.demo import ROOT, free_port, start_server, stop_server

KINDS = {
    "poll": "GET /v1/jobs/{id}",
    "list_jobs": "GET /v1/jobs",
    "list_models": "GET /v1/models",
    "upload": "POST /v1/models",
}
CHUNK = 1024 * 1024  # upload body written to the socket in pieces of this size
BEGIN, END = "<!-- load:begin -->", "<!-- load:end -->"
TARGET_RPS, TARGET_P99_MS = 500, 100  # the target for polling in production mode, uploads running
PG_URL = os.environ.get("SPA_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SPA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


# -- the server under load --------------------------------------------------------------------


@dataclass
class Server:
    url: str
    headers: dict[str, str]
    describe: str
    api_pids: Callable[[], list[int]] = field(default=lambda: [])
    worker_pids: Callable[[], list[int]] = field(default=lambda: [])  # Celery: its CPU is told apart
    # connections the database has accepted so far (PostgreSQL): how many the load made the pools open
    db_sessions: Callable[[], int] | None = None


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (no psutil in the venv)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:  # exited meanwhile
            pass
    return total


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds used so far), for every process we may read."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            name, rest = stat.split("(", 1)[1].rsplit(")", 1)
            f = rest.split()
            out[int(entry)] = (name, (int(f[11]) + int(f[12])) / tick)  # utime + stime
    return out


def cpu_by_group(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], groups: dict[str, set[int]]
) -> dict[str, float]:
    """CPU seconds spent between two snapshots: by the given pid groups, by PostgreSQL backends,
    and by everything else on the machine (other users' work included)."""
    spent = {g: 0.0 for g in groups} | {"postgres": 0.0, "other": 0.0}
    for pid, (name, cpu) in after.items():
        used = cpu - before.get(pid, (name, 0.0))[1]
        group = next((g for g, pids in groups.items() if pid in pids), None)
        spent[group or ("postgres" if name == "postgres" else "other")] += used
    return spent


def wait_up(url: str, proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        try:
            host, port = _host_port(url)
            c = http.client.HTTPConnection(host, port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                c.close()
                return
            c.close()
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 20) -> None:
    """SIGTERM the process group (uvicorn master and workers, or celery and its pool), then KILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


@contextmanager
def embedded_server(tmp: Path) -> Iterator[Server]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "serve.log"
    proc = start_server(tmp / "data", port, log)
    try:
        wait_up(url, proc, log, "spa serve")
        # The API runs inside `spa serve`; its children are the Celery worker (not the API).
        yield Server(url, {}, "`spa serve`: one process (API), SQLite, SQLAlchemy broker, its Celery worker",
                     lambda: [proc.pid], lambda: process_tree(proc.pid)[1:])  # fmt: skip
    finally:
        stop_server(proc)


@contextmanager
def external_server(server: Server) -> Iterator[Server]:
    yield server


def settings_env(settings: Any) -> dict[str, str]:
    """The SPA_* environment that makes a subprocess see these settings (as tests/service do)."""
    from app.core.config import as_environment

    return {**as_environment(settings), "PYTHONPATH": str(ROOT)}


@contextmanager
def production_server(tmp: Path, args: argparse.Namespace) -> Iterator[Server]:
    import sqlalchemy as sa

    from app.core.apikeys import create_key
    from app.core.config import Settings
    from app.core.db.migrate import upgrade
    from app.core.db.session import get_engine, session_scope

    run = uuid.uuid4().hex[:8]
    db_name = f"spa_load_{run}"
    prefix = f"spa-load-{run}:"
    admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
    db_url = sa.make_url(args.pg_url).set(database=db_name).render_as_string(hide_password=False)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upgrade(db_url)
        settings = Settings(
            data_dir=tmp / "data", database_url=db_url, broker_url=args.redis_url, broker_key_prefix=prefix,
            queue_cpu=f"spa-load-{run}-cpu", queue_gpu=f"spa-load-{run}-gpu",
        )  # fmt: skip
        with session_scope(db_url) as session:
            _, key = create_key(session, "bench-api-load")
        env = settings_env(settings)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp / "uvicorn.log"
        cmd = [sys.executable, "-m", "uvicorn", "app.api.main:app", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(args.api_workers)]  # fmt: skip
        if not args.access_log:
            cmd.append("--no-access-log")
        api = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
        procs.append(api)
        worker = "no Celery worker"
        worker_root: int | None = None
        if args.celery_worker:
            wlog = tmp / "worker.log"
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q",
                 f"{settings.queue_cpu},{settings.queue_gpu}", "-c", "1", "--pool", "prefork", "-l", "WARNING",
                 "-n", f"load-{run}@%h", "--without-gossip", "--without-mingle"],
                cwd=ROOT, env=env, stdout=wlog.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
            ))  # fmt: skip
            worker = "one Celery worker (-c 1)"
            worker_root = procs[-1].pid
        wait_up(url, api, log, "uvicorn")
        describe = (f"uvicorn --workers {args.api_workers}"
                    f"{'' if args.access_log else ' --no-access-log'}, PostgreSQL, Redis broker, {worker}")

        def db_sessions() -> int:
            with admin.connect() as conn:
                return int(conn.execute(
                    sa.text("SELECT sessions FROM pg_stat_database WHERE datname = :d"), {"d": db_name}
                ).scalar_one())  # fmt: skip

        yield Server(
            url, {"Authorization": f"Bearer {key}"}, describe, lambda: process_tree(api.pid),
            lambda: process_tree(worker_root) if worker_root else [], db_sessions,
        )  # fmt: skip
    finally:
        for p in reversed(procs):
            _stop_group(p)
        get_engine(db_url).dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
        import redis

        r = redis.Redis.from_url(args.redis_url)
        keys = list(r.scan_iter(match=f"{prefix}*"))
        if keys:
            r.delete(*keys)
        r.close()


# -- the clients ------------------------------------------------------------------------------


def _host_port(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    return u.hostname or "127.0.0.1", u.port or 80


@dataclass
class Plan:
    """What one client process runs (picklable: it crosses to a spawned process)."""

    url: str
    headers: dict[str, str]
    job_id: str
    roles: list[str]  # one per client thread: "poll", "list" or "upload"
    seconds: float
    poll_interval: float  # per poller; 0 = closed loop
    upload_bytes: int
    timeout: float


def _get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> int:
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    r.read()
    return r.status


def _upload(conn: http.client.HTTPConnection, headers: dict[str, str], blob: memoryview, name: str) -> int:
    """A multipart POST streamed from memory: a unique head makes every file distinct (no dedup)."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}.onnx"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip
    unique = b"\x08\x07" + uuid.uuid4().bytes  # 0x08: starts like an ONNX ModelProto (the API sniffs it)
    tail = f"\r\n--{boundary}--\r\n".encode()
    conn.putrequest("POST", "/v1/models")
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(len(head) + len(unique) + len(blob) + len(tail)))
    conn.endheaders()
    conn.send(head + unique)
    for i in range(0, len(blob), CHUNK):
        conn.send(blob[i : i + CHUNK])
    conn.send(tail)
    r = conn.getresponse()
    r.read()
    return r.status


def client_process(plan: Plan, out: Any, ready: Any, go: Any, go_at: Any) -> None:
    """Runs one thread per role; puts {kind: [(seconds, status, end), ...], "bytes": n} on ``out``.
    Status 0: no answer (connection error or timeout). Every thread connects and sends one request
    first; then the process waits at ``ready`` (a barrier of all processes and the bench) and starts
    at the time the bench puts in ``go_at`` before it sets ``go``: a process that was slow to spawn
    does not start late."""
    host, port = _host_port(plan.url)
    # 18 bytes go before it (see _upload): the file is exactly upload_bytes long
    blob = memoryview(os.urandom(max(plan.upload_bytes - 18, 0))) if "upload" in plan.roles else memoryview(b"")
    records: dict[str, list[tuple[float, int, float]]] = {k: [] for k in KINDS}
    sent = [0]
    lock = threading.Lock()
    warm = threading.Barrier(len(plan.roles) + 1)
    started = threading.Event()
    start = [0.0]

    def run(role: str, i: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=plan.timeout)
        mine: dict[str, list[tuple[float, int, float]]] = {k: [] for k in KINDS}
        mine_bytes = 0
        try:
            _get(conn, f"/v1/jobs/{plan.job_id}", plan.headers)  # connect and warm up before the clock
        except (OSError, http.client.HTTPException):
            conn.close()
        warm.wait()
        started.wait()
        time.sleep(max(0.0, start[0] - time.time()))
        deadline = start[0] + plan.seconds
        # pollers start at random phases so that paced ones do not arrive in waves
        next_at = time.perf_counter() + random.random() * plan.poll_interval
        n = 0
        while time.time() < deadline:
            if role == "poll":
                kind = "poll"
                if plan.poll_interval:
                    time.sleep(max(0.0, next_at - time.perf_counter()))
                    next_at = max(next_at + plan.poll_interval, time.perf_counter())  # late: no burst
            elif role == "list":
                kind = "list_jobs" if n % 2 == 0 else "list_models"
            else:
                kind = "upload"
            n += 1
            t0 = time.perf_counter()
            try:
                if kind == "poll":
                    status = _get(conn, f"/v1/jobs/{plan.job_id}", plan.headers)
                elif kind == "list_jobs":
                    status = _get(conn, "/v1/jobs", plan.headers)
                elif kind == "list_models":
                    status = _get(conn, "/v1/models", plan.headers)
                else:
                    status = _upload(conn, plan.headers, blob, f"load-{os.getpid()}-{i}-{n}")
                    if status < 300:
                        mine_bytes += plan.upload_bytes
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()  # the next request reconnects
            t1 = time.perf_counter()
            mine[kind].append((t1 - t0, status, time.time()))
        conn.close()
        with lock:
            for k, v in mine.items():
                records[k].extend(v)
            sent[0] += mine_bytes

    threads = [threading.Thread(target=run, args=(role, i), daemon=True) for i, role in enumerate(plan.roles)]
    for t in threads:
        t.start()
    warm.wait()
    ready.wait(300)
    go.wait(300)
    start[0] = go_at.value
    started.set()
    for t in threads:
        t.join()
    out.put({"records": records, "bytes": sent[0]})


# -- one run ----------------------------------------------------------------------------------


@dataclass
class KindStats:
    clients: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    errors_5xx: int


@dataclass
class Result:
    mode: str
    describe: str
    clients: int
    seconds: float
    poll_rate: float
    kinds: dict[str, KindStats]
    upload_mb: int
    uploaded_bytes: int
    upload_mb_s: float
    rss_before: int
    rss_peak: int
    rss_after: int
    api_processes: int
    cpu_cores: dict[str, float]  # cores busy during the load: api, worker, clients, postgres, other
    load_before: str  # the machine's load average when the run began (a shared machine shows here)
    db_connections_opened: int | None  # PostgreSQL connections opened during the load (pool churn)
    date: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def roles_for(clients: int, upload_share: float, list_share: float) -> list[str]:
    uploaders = round(clients * upload_share)
    listers = round(clients * list_share)
    if uploaders + listers > clients:
        raise SystemExit("--upload-share + --list-share leave no room: lower them")
    return ["upload"] * uploaders + ["list"] * listers + ["poll"] * (clients - uploaders - listers)


def seed(server: Server, tmp: Path, jobs: int) -> str:
    """A model and ``jobs`` jobs for the list and the poll; the jobs are cancelled at once, so that
    no pruning competes for the CPU (reading a job costs the same in every state). The first job's
    id: the one the pollers read."""
    import httpx

    from tests.service.modelzoo import tiny_cnn

    model = tiny_cnn(tmp / "tiny.onnx")
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as c:
        with model.open("rb") as fh:
            r = c.post("/v1/models", files={"file": ("tiny.onnx", fh)})
        r.raise_for_status()
        mid = r.json()["id"]
        ids = []
        for k in range(max(jobs, 1)):
            r = c.post("/v1/jobs", json={"model_id": mid, "spec": {"target": {"flops": 0.3 + 0.01 * k}}})
            r.raise_for_status()
            ids.append(r.json()["id"])
            c.post(f"/v1/jobs/{ids[-1]}/cancel")
    return ids[0]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run_load(server: Server, mode: str, tmp: Path, args: argparse.Namespace) -> Result:
    load_before = loadavg()
    job_id = seed(server, tmp, args.seed_jobs)
    roles = roles_for(args.clients, args.upload_share, args.list_share)
    pollers = roles.count("poll")
    procs_n = max(1, min(args.client_procs, len(roles)))
    # uploaders spread over the processes like everyone else (round robin)
    shares: list[list[str]] = [roles[i::procs_n] for i in range(procs_n)]
    ctx = mp.get_context("spawn")
    out, ready, go, go_at = ctx.Queue(), ctx.Barrier(procs_n + 1), ctx.Event(), ctx.Value("d", 0.0)
    plans = [
        Plan(server.url, server.headers, job_id, share, args.seconds,
             pollers / args.poll_rate if args.poll_rate else 0.0, args.upload_mb * 1_000_000, args.timeout)
        for share in shares
    ]  # fmt: skip
    workers = [ctx.Process(target=client_process, args=(p, out, ready, go, go_at), daemon=True) for p in plans]
    for w in workers:
        w.start()
    ready.wait(300)  # every client connected and answered once
    rss_before = rss_bytes(server.api_pids())
    sessions_before = server.db_sessions() if server.db_sessions else None
    start_at = time.time() + 0.2
    go_at.value = start_at
    go.set()
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before, cpu_t0 = cpu_snapshot(), time.monotonic()
    peak = [rss_before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            peak[0] = max(peak[0], rss_bytes(server.api_pids()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # CPU over the load window only (the last uploads may run on past it)
    time.sleep(max(0.0, start_at + args.seconds - time.time()))
    api_pids = set(server.api_pids())
    groups = {"api": api_pids, "worker": set(server.worker_pids()), "clients": {w.pid for w in workers}}
    cpu_spent = cpu_by_group(cpu_before, cpu_snapshot(), groups)
    cpu_cores = {g: v / (time.monotonic() - cpu_t0) for g, v in cpu_spent.items()}
    db_opened = server.db_sessions() - sessions_before if server.db_sessions and sessions_before is not None else None
    results = [out.get(timeout=args.seconds + args.timeout + 120) for _ in workers]
    for w in workers:
        w.join(30)
    stop.set()
    sampler.join()
    pids = server.api_pids()
    rss_after = rss_bytes(pids)
    peak[0] = max(peak[0], rss_after)

    merged: dict[str, list[tuple[float, int, float]]] = {k: [] for k in KINDS}
    for res in results:
        for k, v in res["records"].items():
            merged[k].extend(v)
    clients_of = {"poll": pollers, "list_jobs": roles.count("list"), "list_models": roles.count("list"),
                  "upload": roles.count("upload")}  # fmt: skip
    kinds: dict[str, KindStats] = {}
    for k, recs in merged.items():
        if not clients_of[k]:
            continue
        lat = sorted(r[0] for r in recs)
        # up to the last answer: an upload in flight at the deadline still counts, and its time too
        elapsed = max([args.seconds] + [r[2] - start_at for r in recs])
        kinds[k] = KindStats(
            clients=clients_of[k], requests=len(recs), rps=len(recs) / elapsed,
            p50_ms=_pct(lat, 0.50) * 1000, p99_ms=_pct(lat, 0.99) * 1000,
            errors=sum(1 for r in recs if not 200 <= r[1] < 300), errors_5xx=sum(1 for r in recs if r[1] >= 500),
        )  # fmt: skip
    uploaded = sum(r["bytes"] for r in results)
    up_elapsed = max([args.seconds] + [r[2] - start_at for r in merged["upload"]])
    return Result(
        mode=mode, describe=server.describe, clients=args.clients, seconds=args.seconds, poll_rate=args.poll_rate,
        kinds=kinds, upload_mb=args.upload_mb, uploaded_bytes=uploaded, upload_mb_s=uploaded / 1e6 / up_elapsed,
        rss_before=rss_before, rss_peak=peak[0], rss_after=rss_after, api_processes=len(pids), cpu_cores=cpu_cores,
        load_before=load_before, db_connections_opened=db_opened,
    )  # fmt: skip


# -- reporting --------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n else "n/a"


def table(res: Result) -> str:
    rows = ["| request | clients | requests | requests/s | p50 ms | p99 ms | errors | of them 5xx |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for k, s in res.kinds.items():
        label = KINDS[k] + (f" ({res.upload_mb} MB files)" if k == "upload" else "")
        rows.append(f"| `{label}` | {s.clients} | {s.requests:,} | {s.rps:,.1f} | {s.p50_ms:.1f} | "
                    f"{s.p99_ms:.1f} | {s.errors} | {s.errors_5xx} |")  # fmt: skip
    pace = f"paced at {res.poll_rate:g} requests/s in all" if res.poll_rate else "closed loop, as fast as answered"
    rows += [
        "",
        f"- Server: {res.describe}.",
        f"- {res.clients} clients for {res.seconds:g} s; polling {pace}; list clients alternate the two lists.",
        f"- Uploaded: {res.uploaded_bytes:,} bytes ({res.uploaded_bytes / 1e6:,.0f} MB) in distinct files, "
        f"{res.upload_mb_s:,.1f} MB/s (MB = 10^6 bytes).",
        f"- API RSS ({res.api_processes} process{'es' if res.api_processes != 1 else ''}): before "
        f"{_mib(res.rss_before)}, peak {_mib(res.rss_peak)}, after {_mib(res.rss_after)}.",
        "- CPU during the load, in cores (of " + str(os.cpu_count()) + "): "
        + ", ".join(f"{g} {c:.2f}" for g, c in res.cpu_cores.items())
        + " (processes alive at both ends of the window; 'other' is the rest of the machine).",
    ]
    poll = res.kinds.get("poll")
    if res.mode == "production" and poll is not None:
        met = poll.rps >= TARGET_RPS and poll.p99_ms <= TARGET_P99_MS and poll.errors == 0
        rows.append(f"- Issue target for polling (≥ {TARGET_RPS} requests/s, p99 ≤ {TARGET_P99_MS} ms, no errors"
                    f"{', uploads running' if 'upload' in res.kinds else ''}): {'met' if met else 'not met'}.")  # fmt: skip
    if res.db_connections_opened is not None:
        rows.append(f"- PostgreSQL connections opened during the load: {res.db_connections_opened}"
                    " (the API's pools open one each time they run short).")  # fmt: skip
    return "\n".join(rows)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


TITLES = {"embedded": "Embedded (`spa serve`)", "production": "Production (uvicorn workers, PostgreSQL, Redis)",
          "external": "External server"}  # fmt: skip


def block_key(res: Result) -> str:
    """A closed-loop run and a paced one of the same mode each keep a block of their own."""
    return f"{res.mode}-paced" if res.poll_rate else res.mode


def mode_block(res: Result, command: str) -> str:
    key = block_key(res)
    title = TITLES[res.mode] + (f", polls paced at {res.poll_rate:g} requests/s" if res.poll_rate else "")
    return (f"<!-- load:{key}:begin -->\n### {title}\n\n"
            f"`{command}` — {res.date}, {machine()}, load average {res.load_before} before the run."
            f"\n\n{table(res)}\n<!-- load:{key}:end -->")  # fmt: skip


def load_section(blocks: dict[str, str]) -> str:
    intro = (
        "## Load\n\n"
        "Written by `python -m bench.api_load --write docs/reliability.md` (bench/api_load.py; only the text "
        "between the load markers is its own). Clients poll one job, list jobs and models, and upload "
        "distinct files at the same time; latencies are measured by the client, from the request sent to "
        "the answer read. The clients run on the same machine as the server and share its cores. "
        "Closed-loop pollers wait N / throughput on average (Little's law: 40 pollers at 500 requests/s "
        "see 80 ms), so their p99 says how saturated the server is; `--poll-rate R` paces them at R "
        "requests/s in all and shows the latency at that rate."
    )
    order = [f"{m}{paced}" for m in ("embedded", "production", "external") for paced in ("", "-paced")]
    body = "\n\n".join(blocks[k] for k in order if k in blocks)
    return f"{BEGIN}\n{intro}\n\n{body}\n{END}"


def write_docs(path: Path, results: list[Result], command: str) -> None:
    """Replace this run's modes in the load section; keep the other mode's block and the rest of the file."""
    old = docsection.current(path, BEGIN, END)
    blocks = {m.group(1): m.group(0)
              for m in re.finditer(r"<!-- load:([\w-]+):begin -->.*?<!-- load:\1:end -->", old, re.S)}  # fmt: skip
    for res in results:
        blocks[block_key(res)] = mode_block(res, command)
    docsection.replace(path, BEGIN, END, load_section(blocks), "# Reliability")


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--mode", choices=["embedded", "production", "both"], default="production")
    ap.add_argument("--server", help="load a running server instead (no RSS figures)")
    ap.add_argument("--api-key", default=os.environ.get("SPA_API_KEY", ""))
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--upload-share", type=float, default=0.1, help="fraction of the clients that upload")
    ap.add_argument("--list-share", type=float, default=0.1, help="fraction of the clients that list")
    ap.add_argument("--upload-mb", type=int, default=20)
    ap.add_argument("--poll-rate", type=float, default=0, help="all pollers together, requests/s; 0: closed loop")
    ap.add_argument("--seed-jobs", type=int, default=20, help="jobs in the list (the first is polled)")
    # 4: with 2, a process held 25 threads, and a poller also waited for its own process's GIL (the
    # uploaders' and the other pollers' turns), which is no part of the server's answer (paced at
    # 500/s: p99 106-121 ms in 4 runs with 2 processes; 79 ms with 4, 94 with 8, one run each)
    ap.add_argument("--client-procs", type=int, default=4, help="client processes (threads spread over them)")
    ap.add_argument("--timeout", type=float, default=120, help="per request, seconds")
    ap.add_argument("--api-workers", type=int, default=os.cpu_count() or 2, help="production: uvicorn --workers")
    ap.add_argument("--access-log", action="store_true", help="production: keep uvicorn's access log (its default)")
    ap.add_argument("--celery-worker", action="store_true", help="production: also run one Celery worker")
    ap.add_argument("--pg-url", default=PG_URL, help="production: an existing database to CREATE DATABASE from")
    ap.add_argument("--redis-url", default=REDIS_URL)
    ap.add_argument("--write", type=Path, help="update the '## Load' section of this Markdown file")
    args = ap.parse_args()
    command = shlex.join(["python", "-m", "bench.api_load", *sys.argv[1:]])

    results: list[Result] = []
    modes = ["external"] if args.server else ["embedded", "production"] if args.mode == "both" else [args.mode]
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="spa-load-") as tmp_s:
            tmp = Path(tmp_s)
            if mode == "external":
                headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
                server_cm: Any = external_server(Server(args.server, headers, f"a running server at {args.server}"))
            elif mode == "embedded":
                server_cm = embedded_server(tmp)
            else:
                server_cm = production_server(tmp, args)
            with server_cm as server:
                res = run_load(server, mode, tmp, args)
        results.append(res)
        print(f"\n{TITLES[mode]}\n{table(res)}\n", flush=True)
    if args.write:
        write_docs(args.write, results, command)
        print(f"wrote the load section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
