"""Uploaded PyTorch archives never run code: every pickled or evaluated member of a real .pt2 (and a
TorchScript archive) replaced by a payload that creates a marker file. torch's own loader runs the
payloads (proved first); ours refuses each with a sentence naming the member, through the library
entry points and the CLI, and the marker never appears."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
import torch

from client.cli import main
from pruning_core.errors import ModelLoadError
from tests.untrusted import (
    LIVE_UNDER_TORCH,
    PT2_VARIANTS,
    malicious_pt2,
    malicious_torchscript,
    save_program,
)

SPEC = {"target": {"flops": 0.3}}
REFUSED = [v for v in PT2_VARIANTS if v != "guards_code"]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_program(tmp_path_factory.mktemp("pt2") / "good.pt2")


@contextlib.contextmanager
def _torch_quiet() -> object:
    # torch logs the tracebacks of its own failed attempts (and of its fallback) at WARNING
    logger = logging.getLogger("torch")
    level, logger.level = logger.level, logging.CRITICAL
    try:
        yield
    finally:
        logger.setLevel(level)


@pytest.mark.parametrize("variant", LIVE_UNDER_TORCH)
def test_payload_is_armed_under_torch_export_load(good: Path, tmp_path: Path, variant: str) -> None:
    marker = tmp_path / "ran"
    bad = tmp_path / "model.pt2"
    malicious_pt2(good, variant, bad, marker)
    with _torch_quiet(), contextlib.suppress(Exception):
        ep = torch.export.load(str(bad))
        ep.module()(torch.randn(2, 3, 16, 16))  # the guards run here
    assert marker.exists(), f"the {variant} payload did not run under torch.export.load"


@pytest.mark.parametrize("variant", REFUSED)
def test_malicious_member_is_refused_and_never_runs(good: Path, tmp_path: Path, variant: str) -> None:
    from pruning_core.api import analyze, prune

    marker = tmp_path / "ran"
    bad = tmp_path / "model.pt2"
    member = malicious_pt2(good, variant, bad, marker)
    with pytest.raises(ModelLoadError) as info:
        analyze(bad)  # what the worker's validation runs
    assert member in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match=member):
        prune(bad, SPEC, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out" / "pruned.onnx").exists()


def test_guards_code_is_dropped_not_run(good: Path, tmp_path: Path) -> None:
    """Guards are source code torch exec()s; a program whose guards are a payload still prunes, and
    the payload never runs (the pruned.pt2 check calls the program's module)."""
    from pruning_core.api import prune

    marker = tmp_path / "ran"
    bad = tmp_path / "model.pt2"
    malicious_pt2(good, "guards_code", bad, marker)
    result = prune(bad, SPEC, tmp_path / "out")
    assert result.artifacts["pruned.pt2"].exists()
    assert not marker.exists()


def test_clean_program_with_dynamic_batch_prunes(good: Path, tmp_path: Path) -> None:
    from pruning_core.api import prune

    result = prune(good, SPEC, tmp_path / "out")
    assert result.report["verify"]["passed"]
    assert result.summary["macs_after"] < result.summary["macs_before"]


def test_torchscript_archive_is_refused_unread(tmp_path: Path) -> None:
    from pruning_core.api import analyze, prune

    marker = tmp_path / "ran"
    bad = tmp_path / "model.pt"
    malicious_torchscript(bad, marker)
    for call in (lambda: analyze(bad), lambda: prune(bad, {**SPEC, "input_shapes": {"x": [1, 3, 16, 16]}},
                                                       tmp_path / "out")):
        with pytest.raises(ModelLoadError, match="TorchScript archive"):
            call()
    assert not marker.exists()


@pytest.mark.parametrize("command", ["prune", "analyze"])
@pytest.mark.parametrize("variant", ["sample_inputs", "pickled_weight", "symbolic_size"])
def test_cli_refuses_with_one_sentence(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture, command: str, variant: str
) -> None:
    marker = tmp_path / "ran"
    bad = tmp_path / "model.pt2"
    member = malicious_pt2(good, variant, bad, marker)
    out = tmp_path / "small.onnx"
    argv = [command, str(bad)] + (["-o", str(out), "--flops", "0.3"] if command == "prune" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert member in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not marker.exists() and not out.exists()
