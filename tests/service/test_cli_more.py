"""More of the `spa` command line (#14 item 5): datasets and groups, the result table after a wait,
the default target said out loud, progress lines off a terminal, and `spa admin` / `spa db` on the
database of `spa serve --data-dir`."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from client import SpaClient
from client.cli import main
from client.progress import ProgressBar
from tests.service.conftest import ROOT, free_port, wait_for
from tests.service.test_cli import cli_env, run  # noqa: F401  (cli_env: a fixture used here)


def _client() -> SpaClient:
    return SpaClient()  # SPA_SERVER / SPA_API_KEY from cli_env


def test_datasets_and_groups(
    zoo: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_env: str  # noqa: F811
) -> None:
    data = tmp_path / "calib.npz"
    np.savez(data, input=np.random.rand(6, 1, 16, 16).astype(np.float32), labels=np.arange(6))
    with _client() as client:
        model = client.upload_model(zoo["tiny"])
        dataset = client.upload_dataset(data, model_id=model["id"])
        # `spa groups` right after the upload: it waits for the analysis instead of failing with 409
        code, out, err = run(["groups", model["id"]], capsys)
        assert code == 0, err
        groups = client.model_groups(model["id"])["groups"]
    rows = out.splitlines()
    assert rows[0].split() == ["ID", "SIZE", "STATE", "NAME", "WHY", "FIXED"]
    assert len(rows) == 1 + len(groups)
    for group, row in zip(groups, rows[1:], strict=True):
        cells = row.split()
        assert cells[:3] == [str(group["id"]), str(group["size"]), "prunable" if group["prunable"] else "fixed"]
        if not group["prunable"]:  # the reason the server gave, in the row
            assert group["reasons"] and group["reasons"][0] in row
    assert {"prunable", "fixed"} <= {row.split()[2] for row in rows[1:]}  # the logits' group is fixed
    fixed = sum(not g["prunable"] for g in groups)
    assert f"{len(groups)} groups, {len(groups) - fixed} prunable, {fixed} fixed" in err

    code, out, err = run(["datasets"], capsys)
    assert code == 0, err
    assert out.splitlines()[0].split() == ["ID", "FILE", "BYTES", "ARRAYS", "CREATED"]
    line = next(ln for ln in out.splitlines() if ln.startswith(dataset["id"]))
    assert "calib.npz" in line and "input[6,1,16,16]" in line and "labels[6]" in line
    assert f"{data.stat().st_size:,}" in line

    for argv, words in ((["groups", "no-such-model"], "not a model id"),
                        (["groups", str(zoo["tiny"])], "spa analyze"),
                        (["groups", "0" * 32], "404")):  # fmt: skip
        code, out, err = run(argv, capsys)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1 and not out, (argv, err)
        assert "Traceback" not in err and "Error" not in err


def test_submit_wait_off_a_terminal_says_default_target_progress_and_results(
    zoo: dict[str, Path], capsys: pytest.CaptureFixture[str], cli_env: str  # noqa: F811
) -> None:
    # A subprocess whose stderr is a pipe, as in CI: not a terminal.
    r = subprocess.run([sys.executable, "-m", "client.cli", "submit", str(zoo["tiny"]), "--criterion", "l1",
                        "--wait"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=180)  # fmt: skip
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()  # stdout: the job id alone, for scripts
    assert len(job_id) == 32, r.stdout
    err = r.stderr
    assert "no target given: pruning 30 % of channels" in err and "(the default)" in err
    progress = [ln for ln in err.splitlines() if ln.startswith("[")]
    assert "\r" not in err and len(progress) >= 2 and "succeeded" in progress[-1] and "100.0%" in progress[-1]
    assert any("queued" in ln or "running" in ln for ln in progress[:-1])

    with _client() as client:
        job = client.get_job(job_id)
    assert job["spec"]["target"]["channels"] == 0.3  # what the note said is what the server did
    s = job["summary"]
    table = err.splitlines()[err.splitlines().index(progress[-1]) + 1:]
    assert table[0].split() == ["before", "after", "ratio"]
    rows = {ln.split()[0]: ln for ln in table[1:]}
    assert rows["params"].split()[1:4] == [f"{s['params_before']:,}", f"{s['params_after']:,}",
                                           f"{s['params_after'] / s['params_before']:.2f}x"]
    assert rows["MACs"].split()[1:4] == [f"{s['macs_before']:,}", f"{s['macs_after']:,}",
                                         f"{s['macs_after'] / s['macs_before']:.2f}x"]
    assert s["macs_after"] < s["macs_before"]
    assert rows["latency"].split()[2:4] == [f"{s['latency_ms_before']:.3f}", f"{s['latency_ms_after']:.3f}"]
    assert f"speed-up {s['speedup']:.2f}x" in rows["latency"]
    assert any(ln.startswith("fidelity on synthetic inputs") and f"{s['fidelity']['cosine']:.4f}" in ln
               for ln in table)
    assert f"verified: max error {s['verify_max_error']:.3g}" in err

    code, out, err = run(["wait", job_id], capsys)  # `spa wait`: JSON on stdout, the table on stderr
    assert code == 0 and json.loads(out)["macs_after"] == s["macs_after"]
    assert f"{s['macs_before']:,}" in err and "ratio" in err


def test_progress_lines_off_a_terminal_every_interval() -> None:
    stream, now = io.StringIO(), [0.0]
    bar = ProgressBar(stream, every_s=10.0, clock=lambda: now[0])
    for t, state, stage, progress in [
        (0, "queued", None, 0.0), (1, "running", "score", 0.1), (2, "running", "score", 0.2),  # same stage
        (12, "running", "score", 0.3),  # 11 s later and moved: a line
        (13, "running", "score", 0.3), (30, "running", "score", 0.3),  # not moved: no line
        (31, "running", "verify", 0.9), (32, "succeeded", "done", 1.0),
    ]:
        now[0] = t
        bar.update({"state": state, "stage": stage, "progress": progress})
    lines = stream.getvalue().splitlines()
    assert [ln.split("%", 1)[1].split() for ln in lines] == [
        ["queued"], ["running", "score"], ["running", "score"], ["running", "verify"], ["succeeded", "done"]]
    assert [ln.split("]")[1].split("%")[0].strip() for ln in lines] == ["0.0", "10.0", "30.0", "90.0", "100.0"]


def test_prune_locally_says_the_default_target(
    zoo: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["prune", str(zoo["tiny"]), "-o", str(tmp_path / "out"), "--report",
                          str(tmp_path / "r.json")], capsys)  # fmt: skip
    assert code == 0, err
    assert "no target given: pruning 30 % of channels" in err
    assert json.loads((tmp_path / "r.json").read_text())["spec"]["target"]["channels"] == 0.3
    code, _, err = run(["prune", str(zoo["tiny"]), "-o", str(tmp_path / "o2"), "--channels", "0.25"], capsys)
    assert code == 0 and "no target given" not in err


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_admin_and_db_on_the_data_dir_of_spa_serve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    code, _, err = run(["db", "upgrade", "--data-dir", str(data)], capsys)
    assert code == 0 and (data / "spa.db").is_file(), err
    code, out, err = run(["admin", "keys", "create", "ci", "--data-dir", str(data)], capsys)
    assert code == 0 and out.startswith("spa_"), err
    key = out.strip()
    code, out, _ = run(["admin", "list-keys", "--data-dir", str(data)], capsys)  # the old name still works
    assert code == 0 and [ln.split()[1] for ln in out.splitlines()[1:]] == ["ci"]

    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPA_")} | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "serve", "--auth", "--port", str(port), "--data-dir", str(data)],
        cwd=tmp_path, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        def status(k: str) -> int | None:
            try:
                return httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {k}"}, timeout=5).status_code
            except httpx.TransportError:
                return None

        # The key made with --data-dir is one the server of that --data-dir accepts.
        assert wait_for(lambda: status(key), 90, 0.3, "spa serve to answer") == 200, log.read_text()
        code, _, err = run(["admin", "keys", "revoke", "ci", "--data-dir", str(data)], capsys)
        assert code == 0 and "revoked" in err
        assert status(key) == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    code, out, err = run(["admin", "keys", "list", "--data-dir", str(tmp_path / "typo")], capsys)
    assert code == 2 and "no database under" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "typo").exists()  # nothing created by a wrong DIR
    with pytest.raises(SystemExit) as e:
        main(["admin", "keys", "list", "--data-dir", str(data), "--database-url", "sqlite://"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
