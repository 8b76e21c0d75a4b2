"""Malicious PyTorch uploads through the service: the worker marks the model invalid, naming the
refused member, and the payload never runs (not in the worker, not in its sandbox). PyTorch uploads
are off by default once API keys are in use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.core.config import Settings
from tests.service.conftest import Backend, make_client, problem, upload, wait_model
from tests.untrusted import malicious_pt2, malicious_torchscript, save_program

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def good_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_program(tmp_path_factory.mktemp("pt2") / "good.pt2")


def _marker(tmp_path: Path) -> Path:
    # world-writable: a payload running as the sandbox's unprivileged user must be able to leave it
    d = tmp_path / "markers"
    d.mkdir()
    d.chmod(0o777)
    return d / "ran"


@pytest.mark.parametrize("variant", ["sample_inputs", "pickled_weight", "opaque_constant", "symbolic_size",
                                     "node_target", "torchscript"])
def test_malicious_archive_is_invalid_and_never_runs(
    live: Any, auth: dict[str, str], good_pt2: Path, tmp_path: Path, variant: str
) -> None:
    marker = _marker(tmp_path)
    if variant == "torchscript":
        bad = tmp_path / "model.pt2"
        malicious_torchscript(bad, marker)
        member = "TorchScript archive"
    else:
        bad = tmp_path / "model.pt2"
        member = malicious_pt2(good_pt2, variant, bad, marker)
    r = upload(live, auth, bad)
    assert r.status_code == 201, r.text
    model = wait_model(live, auth, r.json()["id"])
    assert model["state"] == "invalid", model
    assert member in model["reason"] and "Traceback" not in model["reason"]
    assert not marker.exists()


def test_clean_program_is_ready(live: Any, auth: dict[str, str], good_pt2: Path) -> None:
    r = upload(live, auth, good_pt2)
    assert r.status_code in (200, 201), r.text
    assert wait_model(live, auth, r.json()["id"])["state"] == "ready"


def test_pytorch_uploads_default_off_with_auth(backend: Backend, auth: dict[str, str], good_pt2: Path) -> None:
    settings = backend.settings("idle")
    assert settings.allow_pytorch_uploads is None and not settings.pytorch_uploads_allowed
    with make_client(settings) as client:
        body = problem(upload(client, auth, good_pt2), 403)
        assert "SPA_ALLOW_PYTORCH_UPLOADS" in body["detail"]
    # the no-auth embedded mode serves this machine only: its own user's programs are allowed
    open_settings = Settings(**{**settings.model_dump(), "auth_disabled": True})
    assert open_settings.pytorch_uploads_allowed
