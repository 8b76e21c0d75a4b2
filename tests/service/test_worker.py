"""Through a live Celery worker subprocess: validation, the full round trip with real pruning,
cancel of queued and running jobs, bad models and data found by the worker, and recovery after a
worker is SIGKILLed mid-job. PostgreSQL + Redis, and SQLite + the SQLAlchemy broker."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core.config import Settings
from tests.service.conftest import (
    RUN,
    Backend,
    WorkerProc,
    make_client,
    problem,
    upload,
    wait_for,
    wait_job,
    wait_model,
)

SPEC = {"target": {"flops": 0.5}, "criterion": "l1"}
pytestmark = pytest.mark.timeout(240)


def ready_model(api: Any, auth: dict[str, str], path: Path) -> dict[str, Any]:
    r = upload(api, auth, path)
    assert r.status_code in (200, 201), r.text
    model = wait_model(api, auth, r.json()["id"])
    assert model["state"] == "ready", model
    return model


def test_model_validation_summary_and_groups(live: Any, auth: dict[str, str], zoo: dict[str, Path]) -> None:
    model = ready_model(live, auth, zoo["tiny"])
    s = model["summary"]
    assert s["params"] > 0 and s["macs"] > 0
    assert s["inputs"] == [{"name": "input", "shape": [1, 1, 16, 16], "dtype": "float32"}]
    assert s["outputs"][0]["name"] == "logits"
    groups = live.get(f"/v1/models/{model['id']}/groups", headers=auth).json()
    assert groups["state"] == "ready" and len(groups["groups"]) == s["groups_total"] >= 1


def test_round_trip(live: Any, auth: dict[str, str], zoo: dict[str, Path], tmp_path: Path) -> None:
    model = ready_model(live, auth, zoo["tiny"])
    r = live.post("/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": SPEC})
    assert r.status_code == 202, r.text
    job = wait_job(live, auth, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["progress"] == 1.0 and job["attempts"] == 1 and job["error"] is None
    s = job["summary"]
    assert s["macs_after"] <= 0.55 * s["macs_before"] and s["params_after"] < s["params_before"]
    assert s["verify_max_error"] is not None and s["verify_max_error"] < 1e-3
    names = {a["name"]: a for a in job["artifacts"]}
    assert {"pruned.onnx", "report.json"} <= names.keys()

    data = live.get(f"/v1/jobs/{job['id']}/artifacts/pruned.onnx", headers=auth)
    assert (
        data.status_code == 200 and hashlib.sha256(data.content).hexdigest() == names["pruned.onnx"]["sha256"]
    )
    report = live.get(f"/v1/jobs/{job['id']}/artifacts/report.json", headers=auth).json()
    assert report["macs"]["after"] == s["macs_after"]
    # measured by the worker on the spec's runtime: speed-up and efficiency in the job view too
    assert s["speedup"] == report["latency_ms"]["speedup"] > 0 and s["efficiency"] == report["latency_ms"]["efficiency"]
    assert report["runtime"]["provider"] == "cpu" and report["layers"]
    problem(live.get(f"/v1/jobs/{job['id']}/artifacts/nothing.onnx", headers=auth), 404)

    # report.html: the same figures on one self-contained page (nothing to fetch from anywhere)
    page = live.get(f"/v1/jobs/{job['id']}/artifacts/report.html", headers=auth)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert html.startswith("<!doctype html>") and "</html>" in html
    assert not re.search(r"""<[^>]*\b(src|href)\s*=|https?://|@import|url\(|<script""", html, re.I)
    assert f"{report['macs']['before']:,}" in html and f"{report['macs']['after']:,}" in html
    assert all(layer["node"] in html for layer in report["layers"][:5])
    assert all(str(gr["name"]) in html for gr in report["groups"] if gr["kept"] < gr["total"])
    assert "verification" in html and "passed" in html and "Stage timings" in html

    import onnxruntime as ort  # the pruned model really runs, and keeps the interface

    (tmp_path / "pruned.onnx").write_bytes(data.content)
    sess = ort.InferenceSession(str(tmp_path / "pruned.onnx"), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input": np.random.rand(1, 1, 16, 16).astype(np.float32)})
    assert out.shape == (1, 10)

    events = live.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["items"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert not any("no worker is consuming" in (e["message"] or "") for e in events)  # a live worker beats
    ready = live.get("/readyz").json()
    assert ready["queues"][job["queue"]]["consumed"] and ready["queues"][job["queue"]]["workers"] >= 1
    states = [e["message"].split(":")[0] for e in events if e["kind"] == "state"]
    assert states[0].startswith("queued") and states[1] == "running" and states[-1] == "succeeded"
    stages = [e["stage"] for e in events if e["kind"] == "stage"]
    assert stages[0] == "fetch" and "surgery" in stages and "verify" in stages
    progress = [e["progress"] for e in events if e["progress"] is not None]
    assert progress == sorted(progress)
    tail = live.get(f"/v1/jobs/{job['id']}/events", headers=auth, params={"after": seqs[-2]}).json()
    assert [e["seq"] for e in tail["items"]] == [seqs[-1]]


def test_zip_with_external_data(
    live: Any, auth: dict[str, str], zoo: dict[str, Path], tmp_path: Path
) -> None:
    import onnx

    m = onnx.load(str(zoo["tiny"]))
    onnx.save(m, str(tmp_path / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)  # fmt: skip
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(tmp_path / "model.onnx", "model.onnx")
        zf.write(tmp_path / "model.onnx.data", "model.onnx.data")
    model = ready_model(live, auth, archive)
    assert model["format"] == "zip" and model["summary"]["params"] > 0
    job = wait_job(
        live,
        auth,
        live.post("/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": SPEC}).json()["id"],
    )
    assert job["state"] == "succeeded", job


def test_truncated_model_becomes_invalid_and_leaves_no_blob(
    live: Any, auth: dict[str, str], zoo: dict[str, Path], live_worker: tuple[Settings, WorkerProc]
) -> None:
    settings, _ = live_worker
    r = upload(live, auth, zoo["truncated"])
    assert r.status_code == 201
    model = wait_model(live, auth, r.json()["id"])
    assert model["state"] == "invalid" and model["reason"]
    assert "not available" not in model["reason"]  # a real verdict on the file, not a setup error
    assert not live.app.state.store.exists(model["sha256"])  # rejected bytes are not kept
    body = problem(live.post("/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": SPEC}), 422)
    assert "invalid" in body["detail"]
    problem(live.get(f"/v1/models/{model['id']}/groups", headers=auth), 409)


def test_corrupt_pt2_becomes_invalid_and_worker_lives_on(
    live: Any, auth: dict[str, str], zoo: dict[str, Path], tmp_path: Path,
    live_worker: tuple[Settings, WorkerProc],
) -> None:
    """A .pt2 that is a zip (passes the API's sniff) but no ExportedProgram: the worker loads it,
    fails cleanly, marks the model invalid with the reason, and goes on serving."""
    settings, _ = live_worker
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x04garbage")
        zf.writestr("archive/version", b"3\n")
    bad = tmp_path / "broken.pt2"
    bad.write_bytes(buf.getvalue())
    r = upload(live, auth, bad)
    assert r.status_code == 201
    model = wait_model(live, auth, r.json()["id"])
    assert model["state"] == "invalid" and model["reason"]
    from tests.service.modelzoo import tiny_cnn

    fresh = tiny_cnn(tmp_path / "fresh.onnx", seed=len(str(tmp_path)) + 17)  # new bytes: no dedup
    good = upload(live, auth, fresh)
    assert good.status_code == 201
    assert wait_model(live, auth, good.json()["id"])["state"] == "ready"  # the same worker still works


def test_dataset_names_checked_against_model(
    live: Any, auth: dict[str, str], zoo: dict[str, Path], tmp_path: Path
) -> None:
    model = ready_model(live, auth, zoo["tiny"])
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=np.zeros((4, 1, 16, 16), np.float32))
    with wrong.open("rb") as fh:
        r = live.post(
            "/v1/datasets", headers=auth, data={"model_id": model["id"]}, files={"file": ("wrong.npz", fh)}
        )
    body = problem(r, 422)
    assert "input" in body["detail"] and "pixels" in body["detail"]
    assert not live.app.state.store.exists(hashlib.sha256(wrong.read_bytes()).hexdigest())
    # Uploaded without model_id, the mismatch is caught at submit time.
    ds = upload(live, auth, wrong, url="/v1/datasets").json()
    problem(
        live.post(
            "/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": SPEC, "dataset_id": ds["id"]}
        ),
        422,
    )
    good = tmp_path / "good.npz"
    np.savez(good, input=np.random.rand(8, 1, 16, 16).astype(np.float32), labels=np.arange(8) % 10)
    with good.open("rb") as fh:
        ds = live.post(
            "/v1/datasets", headers=auth, data={"model_id": model["id"]}, files={"file": ("good.npz", fh)}
        )
    assert ds.status_code == 201, ds.text
    r = live.post(
        "/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": SPEC, "dataset_id": ds.json()["id"]}
    )
    job = wait_job(live, auth, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert (
        job["dataset_id"] == ds.json()["id"] and job["spec"]["calibration"]["dataset_id"] == ds.json()["id"]
    )


def test_cancel_queued_job_never_runs(
    settings: Settings, auth: dict[str, str], zoo: dict[str, Path], live_worker: tuple[Settings, WorkerProc]
) -> None:
    live_settings, _ = live_worker
    with make_client(settings) as idle:  # nobody consumes this queue: the job stays queued
        mid = upload(idle, auth, zoo["tiny"]).json()["id"]
        job = idle.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": SPEC}).json()
        assert idle.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).json()["state"] == "cancelled"
    # The message reaches a worker after the cancel (as a late delivery would): it must not run.
    with make_client(live_settings) as live:
        from app.core.queue import send_run_job

        send_run_job(live.app.state.celery, job["id"], live_settings.queue_cpu)
        wait_for(
            lambda: any(
                "not run" in (e["message"] or "")
                for e in live.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["items"]
            ),
            60,
            what="the worker to skip the cancelled job",
        )
        got = live.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert (
        got["state"] == "cancelled"
        and got["started_at"] is None
        and got["attempts"] == 0
        and got["artifacts"] == []
    )


@pytest.mark.slow
def test_cancel_running_job(live: Any, auth: dict[str, str], zoo: dict[str, Path]) -> None:
    model = ready_model(live, auth, zoo["slow"])
    job = live.post("/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": SPEC}).json()
    wait_job(live, auth, job["id"], 60, states=("running",))
    r = live.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 202 and r.json()["state"] in ("cancelling", "cancelled")
    again = live.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.status_code in (200, 409)
    final = wait_job(live, auth, job["id"], 120)
    assert final["state"] == "cancelled" and final["artifacts"] == [] and final["finished_at"]
    messages = [e["message"] for e in live.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["items"]]
    assert any("cancel requested" in (m or "") for m in messages)


@pytest.mark.slow
def test_sigkilled_worker_job_rerun_once_then_failed(
    backend: Backend, auth: dict[str, str], zoo: dict[str, Path], tmp_path: Path
) -> None:
    """Kill the worker (SIGKILL, whole process group) while it runs a job: a new worker re-runs the
    job once; killed again, the job is failed with a reason, not looped forever."""
    settings = backend.settings(f"kill{RUN}")
    with make_client(settings) as api:
        w1 = WorkerProc(settings, tmp_path / "w1.log", f"kill1-{RUN}")
        try:
            model = ready_model(api, auth, zoo["slow"])
            job = api.post("/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": SPEC}).json()
            wait_job(api, auth, job["id"], 60, states=("running",))
        finally:
            w1.kill()
        assert api.get(f"/v1/jobs/{job['id']}", headers=auth).json()["state"] == "running"

        w2 = WorkerProc(settings, tmp_path / "w2.log", f"kill2-{RUN}")
        try:
            second = wait_for(
                lambda: (j := api.get(f"/v1/jobs/{job['id']}", headers=auth).json())["attempts"] == 2
                and j["state"] == "running" and j,
                60,
                what="the job to be re-run on the new worker",
            )  # fmt: skip
            assert second["state"] == "running"
        finally:
            w2.kill()

        w3 = WorkerProc(settings, tmp_path / "w3.log", f"kill3-{RUN}")
        try:
            final = wait_job(api, auth, job["id"], 60)
        finally:
            w3.stop()
        messages = [
            e["message"] or "" for e in api.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["items"]
        ]
    assert final["state"] == "failed" and final["error_code"] == "worker_lost", final
    assert "stopped responding" in final["error"] and final["attempts"] == 2
    assert sum("re-queued" in m for m in messages) == 1
    assert any("attempt 2" in m for m in messages)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_pool_child_killed_like_oom_job_is_rerun(
    backend: Backend, auth: dict[str, str], zoo: dict[str, Path], live_worker: tuple[Settings, WorkerProc]
) -> None:
    """The kernel's OOM killer takes the pool child, not the worker: the job must still finish."""
    import os
    import signal
    import subprocess

    settings, worker = live_worker
    with make_client(settings) as api:
        model = ready_model(api, auth, zoo["slow"])
        job = api.post("/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": SPEC}).json()
        wait_job(api, auth, job["id"], 60, states=("running",))
        children = subprocess.run(
            ["pgrep", "-P", str(worker.proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert children, "no pool child found"
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        final = wait_job(api, auth, job["id"], 120)
    assert worker.proc.poll() is None  # the worker itself survived and forked a new child
    assert final["state"] == "succeeded" and final["attempts"] == 2, final


def test_worker_log_names_the_job_and_how_it_ended(
    live: Any, live_worker: tuple[Settings, WorkerProc], auth: dict[str, str], zoo: dict[str, Path]
) -> None:
    """Every line a task logs names its job or model, and one line says how the job ended (Celery's
    own line says "succeeded" for any task that returned, failed jobs included)."""
    _, worker = live_worker
    model = ready_model(live, auth, zoo["tiny"])
    job = live.post("/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": SPEC}).json()
    final = wait_job(live, auth, job["id"])
    assert final["state"] == "succeeded"
    line = f"[job {job['id']}] job ended: succeeded"
    wait_for(lambda: line in worker.log.read_text(errors="replace"), 10, what="the job's last log line")
    text = worker.log.read_text(errors="replace")
    assert f"[model {model['id']}] validation ended: ready" in text


def test_json_log_lines_carry_the_subject() -> None:
    import json
    import logging

    from worker import logs

    handler = logging.StreamHandler(io.StringIO())
    logger = logging.getLogger("spa.test.jsonlog")
    logger.addHandler(handler)
    logs.install(logger, "json")
    with logs.about("job abc123"):
        logger.warning("stage %s", "verify")
    logger.warning("outside")
    first, second = (json.loads(line) for line in handler.stream.getvalue().splitlines())
    assert first["job"] == "abc123" and first["message"] == "stage verify" and first["level"] == "WARNING"
    assert "job" not in second and second["message"] == "outside"


def test_an_ignore_pattern_that_matches_nothing_is_said_by_the_job(
    live: Any, auth: dict[str, str], zoo: dict[str, Path]
) -> None:
    """The warning crosses the sandbox (its progress pipe throttles messages, never a warning)
    into the job's events, its summary (the CLI's result table) and report.html."""
    model = ready_model(live, auth, zoo["tiny"])
    spec = {**SPEC, "ignore": ["no_such_layer*"]}
    job = wait_job(live, auth, live.post("/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": spec}).json()["id"])
    assert job["state"] == "succeeded", job
    warning = "ignore pattern 'no_such_layer*' matches no tensor of the model's channel groups"
    assert any(warning in w for w in job["summary"]["warnings"])
    events = live.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["items"]
    assert any((e["message"] or "").startswith("warning: " + warning) for e in events)
    html = live.get(f"/v1/jobs/{job['id']}/artifacts/report.html", headers=auth).text
    assert "warning: ignore pattern &#x27;no_such_layer*&#x27;" in html

    from client.cli import result_table

    assert "warning: " + warning in result_table(job["summary"])
