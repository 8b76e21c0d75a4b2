"""The sandboxed child (worker/sandbox.py): confinement, limits and kills, unit-level with a probe
child (tests/service/sandbox_probe.py); then through live Celery workers: cancel of a long job,
no work folder left after a finished, a cancelled or a killed run, a memory limit."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from app.core.config import Settings
from pruning_core.errors import Cancelled
from tests.service.conftest import (
    RUN,
    Backend,
    WorkerProc,
    make_client,
    upload,
    wait_for,
    wait_job,
    wait_model,
)
from worker import sandbox, workdirs

pytestmark = pytest.mark.timeout(120)
PROBE = "tests.service.sandbox_probe"
POLICY = sandbox.Policy(memory=4 * 1024**3, cpu_s=60, file_bytes=64 * 1024**2, grace_s=1.0)
LONG = {"target": {"flops": 0.5}, "criterion": "autobot", "autobot": {"steps": 1_000_000, "batch_size": 2}}
L1 = {"target": {"flops": 0.5}, "criterion": "l1"}


# -- helpers ---------------------------------------------------------------------------------


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def sandbox_children(root_pid: int) -> list[int]:
    """Sandboxed children (worker.sandbox_child) below ``root_pid``."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass

    def below(pid: int) -> bool:
        for _ in range(64):
            pid = parent.get(pid, 0)
            if pid == root_pid:
                return True
            if pid <= 1:
                return False
        return False

    out = []
    for pid in parent:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"worker.sandbox_child" in cmd and below(pid) and not gone(pid):
            out.append(pid)
    return out


def work_folders(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.name.startswith(workdirs.PREFIXES))


def probe(tmp: Path, what: str, policy: sandbox.Policy = POLICY, **kw: Any) -> tuple[dict[str, Any], Path]:
    with mock.patch.object(tempfile, "tempdir", str(tmp)):
        workdir = workdirs.make("job")
    request = {"op": "analyze", "probe": what, **kw.pop("request", {})}
    return sandbox.run(workdir, request, policy, module=PROBE, **kw), workdir


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for name in work_folders(tmp_path):
        workdirs.remove(tmp_path / name)


# -- the child, unit-level -------------------------------------------------------------------


def test_child_is_confined(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPA_DATABASE_URL", "postgresql://user:secret@db/spa")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with socket.socket() as server:  # reachable from here: the child must not reach it
        server.bind(("127.0.0.1", 0))
        server.listen()
        tmp.chmod(0o1777)  # like /tmp
        other = tmp / "spa-job-someone-else"  # another job's folder: same user, must stay unseen
        (other / "in").mkdir(parents=True)
        result, workdir = probe(tmp, "identity", request={"port": server.getsockname()[1]})
    info = result["info"]
    env = info["env"]
    assert not any(k.startswith(("SPA_DATABASE", "AWS_")) for k in env), env
    assert env["OMP_NUM_THREADS"] == "2" and env["HOME"] == str(workdir / "run")
    assert env["TMPDIR"] == str(workdir / "run" / "tmp")
    # the library's unpack bounds follow the worker's settings (pruning_core.ir.limits reads them)
    lib_env = sandbox.child_env(workdir, sandbox.Policy.of(Settings(max_unpacked_bytes=12345)))
    assert lib_env["SPA_MAX_UNPACKED_BYTES"] == "12345" and "SPA_DATABASE_URL" not in lib_env
    lim = info["limits"]
    assert lim["RLIMIT_AS"] == [POLICY.memory] * 2 and lim["RLIMIT_FSIZE"] == [POLICY.file_bytes] * 2
    assert lim["RLIMIT_CPU"][0] == POLICY.cpu_s and lim["RLIMIT_NOFILE"] == [256, 256]
    assert lim["RLIMIT_CORE"] == [0, 0]
    assert info["write_out"] == "done"
    if info["sandbox"]["network"] != "isolated":
        pytest.skip(f"no network namespace on this platform: {info['sandbox']['network']}")
    assert info["connect"].startswith("refused"), info["connect"]
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        assert info["sandbox"]["user"] == "nobody"
        assert info["uid"] == info["euid"] == nobody.pw_uid and info["gid"] == nobody.pw_gid
        assert info["groups"] == [] or info["groups"] == [nobody.pw_gid]
        # its folders are its own; the work folder, its marker and request are not
        assert info["write_workdir"].startswith("refused") and info["write_marker"].startswith("refused")
        assert (workdir / "out" / "ok.txt").stat().st_uid == nobody.pw_uid
        assert info["sandbox"]["folders"] == "private" and info["siblings"] == [workdir.name]
        # the folder of work folders (/tmp in production) is a private tmpfs: writable, not shared
        assert info["write_base"] == "done" and not (tmp / "probe").exists()
    else:
        assert info["uid"] == os.getuid()


def test_cancel_stops_a_silent_child_and_its_group(tmp: Path) -> None:
    """No progress at all (an OBSPA pass, an ORT call): the poll alone stops it, SIGTERM ignored
    included (SIGKILL after the grace), grandchildren included."""
    seen: dict[str, int] = {}
    cancel_at: list[float] = []

    def poll() -> None:
        if len(seen) == 2:
            cancel_at.append(time.monotonic())
            raise Cancelled("cancelled by the user")

    with pytest.raises(Cancelled):
        probe(tmp, "sleep", progress=lambda s, f, m: seen.__setitem__(s, int(m or 0)), poll=poll,
              request={"ignore_term": True})
    # the job ignores SIGTERM: SIGKILL after the grace (at once where the outer process of its
    # PID namespace, which does not ignore it, takes the namespace down)
    took = time.monotonic() - cancel_at[0]
    assert took < POLICY.grace_s + 2, took
    assert gone(seen["child"]) and wait_for(lambda: gone(seen["grandchild"]), 5, what="the grandchild to die")


def test_nothing_the_child_starts_outlives_it(tmp: Path) -> None:
    """A grandchild in a session of its own escapes the group kill; the PID namespace does not."""
    seen: dict[str, int] = {}
    result, _ = probe(tmp, "escape", progress=lambda s, f, m: seen.__setitem__(s, int(m or 0)))
    if result["info"]["sandbox"]["processes"] != "isolated":
        pytest.skip(f"no PID namespace on this platform: {result['info']['sandbox']['processes']}")
    assert wait_for(lambda: gone(seen["grandchild"]), 5, what="the escaped grandchild to die")


def test_cpu_memory_and_file_limits_are_resource_limit(tmp: Path) -> None:
    tight = sandbox.Policy(memory=512 * 1024**2, cpu_s=1, file_bytes=4 * 1024**2, grace_s=1.0)
    with pytest.raises(sandbox.SandboxFailure) as cpu:
        probe(tmp, "spin", tight)
    assert cpu.value.code == "resource_limit" and "CPU time limit of 1 s" in cpu.value.message
    with pytest.raises(sandbox.SandboxFailure) as mem:
        probe(tmp, "alloc", tight)
    assert mem.value.code == "resource_limit" and "memory limit of 512 MiB" in mem.value.message
    with pytest.raises(sandbox.SandboxFailure) as big:
        probe(tmp, "bigfile", tight)
    assert big.value.code == "resource_limit" and "file larger than its limit" in big.value.message


def test_malformed_progress_lines_are_dropped(tmp: Path) -> None:
    seen: list[tuple[str, float, str | None]] = []
    probe(tmp, "noise", progress=lambda *a: seen.append(a))
    assert seen == [("good", 0.5, "m" * 1000)]


def test_real_prune_in_the_child(tmp: Path, zoo: dict[str, Path]) -> None:
    with mock.patch.object(tempfile, "tempdir", str(tmp)):
        workdir = workdirs.make("job")
    (workdir / "in" / "model.onnx").write_bytes(zoo["tiny"].read_bytes())
    stages: list[str] = []
    request = {"op": "prune", "model": "in/model.onnx", "spec": L1, "out": "out", "data": None}
    result = sandbox.run(workdir, request, POLICY, progress=lambda s, f, m: stages.append(s))
    assert {"load", "score", "surgery", "verify", "measure"} <= set(stages)
    assert result["summary"]["macs_after"] < result["summary"]["macs_before"]
    paths = {name: sandbox.output_path(workdir, rel) for name, rel in result["artifacts"].items()}
    assert paths["pruned.onnx"] == workdir / "out" / "pruned.onnx"
    # A bad model is the model's fault, with the library's error code, as in-process.
    (workdir / "in" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(sandbox.SandboxFailure) as bad:
        sandbox.run(workdir, request, POLICY)
    assert bad.value.code == "invalid_model", bad.value.message


def test_planted_links_are_not_followed(tmp: Path) -> None:
    workdir = tmp / "w"
    (workdir / "out").mkdir(parents=True)
    (workdir / "out" / "link").symlink_to("/etc/passwd")
    (workdir / "out" / "dir").symlink_to("/etc")
    with pytest.raises(OSError):
        sandbox.open_output(workdir / "out" / "link", None)
    with pytest.raises(sandbox.SandboxFailure):
        sandbox.output_path(workdir, "out/dir/passwd")
    for rel in ("../x", "/etc/passwd", "in/model.onnx", "out"):
        with pytest.raises(sandbox.SandboxFailure):
            sandbox.output_path(workdir, rel)
    os.mkfifo(workdir / "out" / "fifo")  # opening it must not hang the worker
    with pytest.raises(OSError):
        sandbox.open_output(workdir / "out" / "fifo", None)


def test_stale_work_folders_of_dead_owners_are_removed(tmp: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    with mock.patch.object(tempfile, "tempdir", str(tmp)):
        mine, theirs, fresh = workdirs.make("job"), workdirs.make("validate"), workdirs.make("job")
    owner = json.loads((theirs / workdirs.MARKER).read_text())
    (theirs / workdirs.MARKER).write_text(json.dumps({**owner, "pid": dead.pid}))
    (fresh / workdirs.MARKER).unlink()  # being created right now: kept for a while
    assert workdirs.remove_stale(tmp) == [theirs]
    assert mine.exists() and fresh.exists() and not theirs.exists()


# -- through live workers --------------------------------------------------------------------


def ready_model(api: Any, auth: dict[str, str], path: Path) -> dict[str, Any]:
    r = upload(api, auth, path)
    assert r.status_code in (200, 201), r.text
    model = wait_model(api, auth, r.json()["id"])
    assert model["state"] == "ready", model
    return model


def start_worker(settings: Settings, tmpdir: Path, log: Path, name: str) -> WorkerProc:
    """A worker whose temp dir (where its work folders go) is ``tmpdir``."""
    with mock.patch.dict(os.environ, {"TMPDIR": str(tmpdir)}):
        return WorkerProc(settings, log, name)


@pytest.fixture(scope="module")
def boxed(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, WorkerProc, Path]]:
    settings = backend.settings(f"box{RUN}")
    tmpdir = tmp_path_factory.mktemp("worker-tmp")
    w = start_worker(settings, tmpdir, tmpdir.parent / f"boxed-{backend.name}.log", f"boxed-{RUN}")
    yield settings, w, tmpdir
    w.stop()


def cancel_running(api: Any, auth: dict[str, str], job_id: str, worker: WorkerProc) -> float:
    """Cancel a job whose sandboxed child is running; seconds until it is cancelled and the child gone."""
    children = wait_for(lambda: sandbox_children(worker.proc.pid), 60, what="the sandboxed child")
    wait_for(lambda: api.get(f"/v1/jobs/{job_id}", headers=auth).json()["stage"] == "score", 60,
             what="the job to reach the score stage")
    t0 = time.monotonic()
    assert api.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 202
    final = wait_job(api, auth, job_id, 30)
    took = time.monotonic() - t0
    assert final["state"] == "cancelled" and final["artifacts"] == [], final
    assert wait_for(lambda: all(gone(pid) for pid in children), 5, what="the child to be gone")
    return took


def test_cancel_of_a_long_job_within_10_s(
    boxed: tuple[Settings, WorkerProc, Path], auth: dict[str, str], zoo: dict[str, Path]
) -> None:
    settings, worker, tmpdir = boxed
    with make_client(settings) as api:
        model = ready_model(api, auth, zoo["tiny"])
        job = api.post("/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": LONG}).json()
        took = cancel_running(api, auth, job["id"], worker)
        print(f"cancel took {took:.2f} s")
        assert took < 10, took
        events = api.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["items"]
        assert sum(e["kind"] == "log" for e in events) < 200  # per-step messages are throttled
    assert work_folders(tmpdir) == []


def test_no_work_folder_survives_a_finished_run(
    boxed: tuple[Settings, WorkerProc, Path], auth: dict[str, str], zoo: dict[str, Path]
) -> None:
    settings, _, tmpdir = boxed
    with make_client(settings) as api:
        model = ready_model(api, auth, zoo["tiny"])
        job = wait_job(api, auth, api.post("/v1/jobs", headers=auth,
                                           json={"model_id": model["id"], "spec": L1}).json()["id"])
    assert job["state"] == "succeeded", job
    assert work_folders(tmpdir) == []


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_killed_worker_leaves_no_work_folder_or_child(
    backend: Backend, auth: dict[str, str], zoo: dict[str, Path], tmp_path: Path
) -> None:
    """SIGKILL the worker mid-job: its child dies with it (PDEATHSIG), and the next worker removes
    the folder it left."""
    settings = backend.settings(f"boxkill{RUN}")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with make_client(settings) as api:
        w1 = start_worker(settings, tmpdir, tmp_path / "w1.log", f"boxkill1-{RUN}")
        try:
            model = ready_model(api, auth, zoo["tiny"])
            job = api.post("/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": LONG}).json()
            children = wait_for(lambda: sandbox_children(w1.proc.pid), 60, what="the sandboxed child")
            left = work_folders(tmpdir)
        finally:
            w1.kill()
        assert len(left) == 1 and left[0].startswith("spa-job-"), left
        assert wait_for(lambda: all(gone(pid) for pid in children), 10, what="the child to die with its worker")
        assert work_folders(tmpdir) == left  # nobody cleaned up: the worker was killed

        w2 = start_worker(settings, tmpdir, tmp_path / "w2.log", f"boxkill2-{RUN}")
        try:
            wait_for(lambda: left[0] not in work_folders(tmpdir), 10, what="the stale folder to be removed")
            # the job is re-run on w2 (attempt 2): cancel it, which leaves nothing behind either
            wait_for(lambda: api.get(f"/v1/jobs/{job['id']}", headers=auth).json()["attempts"] == 2, 30,
                     what="the job to be re-run")
            cancel_running(api, auth, job["id"], w2)
        finally:
            w2.stop()
    assert work_folders(tmpdir) == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_job_over_its_memory_limit_fails_with_resource_limit(
    backend: Backend, auth: dict[str, str], zoo: dict[str, Path], tmp_path: Path
) -> None:
    """300 MiB of address space: the child starts, validates the model and loads it, but not 192 MiB
    of calibration data on top."""
    settings = backend.settings(f"boxmem{RUN}", job_memory_bytes=300 * 1024**2)
    data = tmp_path / "calib.npz"
    np.savez(data, input=np.zeros((192 * 1024, 1, 16, 16), np.float32))
    with make_client(settings) as api:
        w = start_worker(settings, tmp_path, tmp_path / "w.log", f"boxmem-{RUN}")
        try:
            model = ready_model(api, auth, zoo["tiny"])
            with data.open("rb") as fh:
                ds = api.post("/v1/datasets", headers=auth, data={"model_id": model["id"]},
                              files={"file": ("calib.npz", fh)})
            assert ds.status_code == 201, ds.text
            job = api.post("/v1/jobs", headers=auth,
                           json={"model_id": model["id"], "spec": L1, "dataset_id": ds.json()["id"]}).json()
            final = wait_job(api, auth, job["id"], 60)
        finally:
            w.stop()
    assert final["state"] == "failed" and final["error_code"] == "resource_limit", final
    assert "memory limit of 300 MiB" in final["error"]
    assert work_folders(tmp_path) == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_time_limit_kills_the_child(
    backend: Backend, auth: dict[str, str], zoo: dict[str, Path], tmp_path: Path
) -> None:
    settings = backend.settings(f"boxtime{RUN}", task_soft_time_limit=5, task_time_limit=60)
    with make_client(settings) as api:
        w = start_worker(settings, tmp_path, tmp_path / "w.log", f"boxtime-{RUN}")
        try:
            model = ready_model(api, auth, zoo["tiny"])
            job = api.post("/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": LONG}).json()
            children = wait_for(lambda: sandbox_children(w.proc.pid), 30, what="the sandboxed child")
            final = wait_job(api, auth, job["id"], 30)
            assert wait_for(lambda: all(gone(pid) for pid in children), 5, what="the child to be gone")
        finally:
            w.stop()
    assert final["state"] == "failed" and final["error_code"] == "time_limit", final
    assert work_folders(tmp_path) == []
