"""`spa prune` / `spa analyze`: tables, exit codes, nothing written on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.cli import main


def test_prune_writes_model_and_report(mixnet_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    assert main(["prune", str(mixnet_onnx), "-o", str(out), "--flops", "0.5", "--report", str(rep)]) == 0
    assert out.is_file()
    report = json.loads(rep.read_text())
    for key in ("params", "macs", "groups_summary", "verify", "groups"):
        assert key in report
    assert report["verify"]["passed"]
    assert "MACs" in capsys.readouterr().out


@pytest.mark.parametrize("args,msg", [
    (["--flops", "1.5"], "between 0 and 1"),
    (["--criterion", "nope"], "unknown criterion"),
    (["--input-shape", "nope=1,3,16,16"], "unknown input"),
    (["--input-shape", "x=1,a"], "positive dims"),
])
def test_bad_arguments_exit_2(mixnet_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                              args: list[str], msg: str) -> None:
    out = tmp_path / "o.onnx"
    with pytest.raises(SystemExit) as e:
        code = main(["prune", str(mixnet_onnx), "-o", str(out), *args])
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("content", [b"", b"plain text", None])
def test_bad_model_files_exit_2(tmp_path: Path, mixnet_onnx: Path, capsys: pytest.CaptureFixture,
                                content: bytes | None) -> None:
    src = tmp_path / "m.onnx"
    if content is None:  # truncated
        data = mixnet_onnx.read_bytes()
        src.write_bytes(data[: len(data) // 2])
    else:
        src.write_bytes(content)
    out = tmp_path / "o.onnx"
    assert main(["prune", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spa: error:") and "Traceback" not in err
    assert not out.exists()
    assert main(["prune", str(tmp_path / "missing.onnx"), "-o", str(out)]) == 2


def test_analyze_lists_groups(mixnet_onnx: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["analyze", str(mixnet_onnx)]) == 0
    out = capsys.readouterr().out
    assert "prunable" in out and "graph output" in out
    assert main(["analyze", str(mixnet_onnx), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["groups_total"] == len(data["groups"]) and data["groups_prunable"] >= 5


def test_cuda_device_without_a_gpu_is_refused(mixnet_onnx: Path, tmp_path: Path) -> None:
    """device: cuda on a machine without a GPU used to run on the CPU without a word."""
    import torch

    from pruning_core import api
    from pruning_core.errors import SpecError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the job would run on it")
    with pytest.raises(SpecError, match="no CUDA GPU"):
        api.prune(mixnet_onnx, {"target": {"flops": 0.3}, "device": "cuda"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("members,msg", [
    ({"../evil.onnx": b"\x08\x07"}, "unsafe path"),
    ({"/abs/model.onnx": b"\x08\x07"}, "unsafe path"),
    ({"model.onnx": bytes(8 * 1024 * 1024)}, "compression ratio"),
], ids=["dotdot", "absolute", "bomb"])
def test_cli_zip_extraction_has_the_service_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture, members: dict[str, bytes], msg: str
) -> None:
    """The CLI unpacks a user's zip with the API's limits (frontends.zipsafe): paths stay inside the
    target, bombs are refused; one sentence, exit 2, nothing written anywhere."""
    import zipfile

    from tests.bombs import zip_bytes

    archive = tmp_path / "m.zip"
    archive.write_bytes(zip_bytes(members, zipfile.ZIP_DEFLATED))
    out = tmp_path / "sub" / "o.onnx"
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["prune", str(archive), "-o", str(out), "--flops", "0.5"]))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "evil.onnx").exists() and not Path("/abs/model.onnx").exists()


def test_an_ignore_pattern_that_matches_nothing_is_said(mixnet_onnx: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """A typo in --ignore pins nothing: the prune goes on, and stderr, report.json and the events
    say which pattern matched no tensor; a pattern that matches is not warned about."""
    from pruning_core.api import analyze

    first = analyze(mixnet_onnx)["groups"][0]["places"][0]["tensor"]
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    args = ["prune", str(mixnet_onnx), "-o", str(out), "--flops", "0.3", "--report", str(rep),
            "--ignore", "no_such_layer*", "--ignore", first]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "spa: warning: ignore pattern 'no_such_layer*' matches no tensor" in err
    assert repr(first) not in err
    warnings = json.loads(rep.read_text())["warnings"]
    assert len(warnings) == 1 and "no_such_layer*" in warnings[0]

    from pruning_core.api import prune

    events: list[str] = []
    res = prune(mixnet_onnx, {"target": {"flops": 0.3}, "ignore": ["zz*"], "measure": False}, tmp_path / "o2",
                progress=lambda stage, frac, msg: events.append(msg or ""))
    assert res.summary["warnings"] == res.report["warnings"] and "'zz*'" in res.report["warnings"][0]
    assert any(m.startswith("warning: ignore pattern 'zz*'") for m in events)
    clean = prune(mixnet_onnx, {"target": {"flops": 0.3}, "measure": False}, tmp_path / "o3")
    assert clean.report["warnings"] == [] and "warnings" not in clean.summary
