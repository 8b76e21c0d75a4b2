"""Fidelity on the user's data through the service: a job's report and summary carry fidelity on
its eval dataset (``spec.calibration.eval_dataset_id``) or on a held-out split of its calibration
dataset; an unknown eval dataset, one that does not fit the model, or a split that leaves no
calibration sample is a 422 and no job. PostgreSQL + Redis, and SQLite + the SQLAlchemy broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from app.core.config import Settings
from app.core.db.models import Job
from app.core.db.session import session_scope
from tests.service.conftest import problem, upload, wait_job, wait_model

# a params target: the tiny CNN measures in microseconds, where a FLOPs cut need not run faster
SPEC: dict[str, Any] = {"target": {"params": 0.3}, "criterion": "l1"}
pytestmark = pytest.mark.timeout(240)


def _dataset(client: Any, auth: dict[str, str], path: Path, n: int, seed: int, labels: bool = True,
             size: int = 16) -> str:
    rng = np.random.default_rng(seed)
    arrays = {"input": rng.standard_normal((n, 1, size, size)).astype(np.float32)}
    if labels:
        arrays["labels"] = rng.integers(0, 10, n)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    r = upload(client, auth, path, url="/v1/datasets")
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def _jobs(settings: Settings) -> int:
    with session_scope(settings.database_url) as s:
        return s.execute(sa.select(sa.func.count()).select_from(Job)).scalar_one()


def test_job_reports_fidelity_on_eval_dataset(live: Any, auth: dict[str, str], zoo: dict[str, Path],
                                              tmp_path: Path) -> None:
    r = upload(live, auth, zoo["tiny"])
    model = wait_model(live, auth, r.json()["id"])
    assert model["state"] == "ready", model
    calib = _dataset(live, auth, tmp_path / "calib.npz", 20, seed=1)
    evalset = _dataset(live, auth, tmp_path / "eval.npz", 30, seed=2)
    spec = {**SPEC, "calibration": {"eval_dataset_id": evalset}}
    r = live.post("/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": spec, "dataset_id": calib})
    assert r.status_code == 202, r.text
    job = wait_job(live, auth, r.json()["id"])
    assert job["state"] == "succeeded", job
    fid = job["summary"]["fidelity"]  # the job view shows where fidelity was measured
    assert fid["inputs"] == "eval data (30 samples)" and fid["samples"] == 30
    assert 0.0 <= fid["top1_agreement"] <= 1.0 and set(fid["accuracy"]) == {"before", "after"}
    report = live.get(f"/v1/jobs/{job['id']}/artifacts/report.json", headers=auth).json()
    assert report["fidelity"]["inputs"] == fid["inputs"] and report["fidelity"]["cosine"] == fid["cosine"]
    assert report["fidelity"]["max_rel_error"] is not None and report["fidelity_before_recovery"] is None

    # the calibration dataset alone: a fifth of it held out (never seen by the criterion)
    r = live.post("/v1/jobs", headers=auth, json={"model_id": model["id"], "spec": SPEC, "dataset_id": calib})
    job = wait_job(live, auth, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["summary"]["fidelity"]["inputs"] == "held-out data (4 samples)"

    # an eval dataset whose samples do not fit the model's input: refused at submit
    small = _dataset(live, auth, tmp_path / "small.npz", 5, seed=3, size=8)
    body = problem(live.post("/v1/jobs", headers=auth, json={
        "model_id": model["id"], "spec": {**SPEC, "calibration": {"eval_dataset_id": small}}}), 422)
    assert "eval dataset does not fit the model" in body["detail"] and "(1, 16, 16)" in body["detail"]


def test_bad_evaluation_requests_are_422_and_make_no_job(
    api: Any, auth: dict[str, str], new_key: Any, zoo: dict[str, Path], tmp_path: Path, settings: Settings
) -> None:
    mid = upload(api, auth, zoo["tiny"]).json()["id"]
    calib = _dataset(api, auth, tmp_path / "c.npz", 3, seed=4)
    bob = new_key("bob")
    bobs = _dataset(api, bob, tmp_path / "b.npz", 6, seed=5)
    before = _jobs(settings)
    cases = [
        ({"eval_dataset_id": "0" * 32}, None, "does not exist"),
        ({"eval_dataset_id": bobs}, None, "does not exist"),  # another tenant's dataset is not there
        ({"eval_fraction": 0.9}, calib, "leaves no sample for calibration"),
        ({"eval_fraction": 0.3}, None, "no calibration data was given"),
        ({"eval_fraction": 0.3, "eval_dataset_id": calib}, calib, "not both"),
    ]
    for calibration, dataset_id, words in cases:
        body = {"model_id": mid, "spec": {**SPEC, "calibration": calibration}}
        if dataset_id:
            body["dataset_id"] = dataset_id
        got = problem(api.post("/v1/jobs", headers=auth, json=body), 422)
        assert words in str(got), (calibration, got)
    assert _jobs(settings) == before


def test_cli_submit_with_eval_data(live_server: str, auth: dict[str, str], zoo: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from client.cli import main

    monkeypatch.setenv("SPA_SERVER", live_server)
    monkeypatch.setenv("SPA_API_KEY", auth["Authorization"].split(" ", 1)[1])
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "eval.npz", input=rng.standard_normal((12, 1, 16, 16)).astype(np.float32),
             labels=rng.integers(0, 10, 12))
    code = main(["submit", str(zoo["tiny"]), "--params", "0.3", "--eval-data", str(tmp_path / "eval.npz"), "--wait"])
    out, err = capsys.readouterr()
    assert code == 0, err
    job_id = out.strip().splitlines()[-1]
    assert main(["wait", job_id]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fidelity"]["inputs"] == "eval data (12 samples)" and summary["fidelity"]["accuracy"] is not None
    assert main(["submit", str(zoo["tiny"]), "--eval-data", str(tmp_path / "absent.npz")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and len(err.strip().splitlines()) == 1
