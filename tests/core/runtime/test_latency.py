"""Runtime-aware pruning: the latency table, kernel-friendly widths, the latency target and the
speed figures of the report. No assertion here depends on how fast this machine is: timings
drive the controller, the tests check what it does with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from client.cli import main
from pruning_core import api
from pruning_core.analysis.groups import analyze
from pruning_core.errors import SpecError, UnreachableTargetError
from pruning_core.importance import ScoreContext, score
from pruning_core.ir import graph
from pruning_core.latency_target import AIM, TOLERANCE, meet_latency
from pruning_core.runtime import latency
from pruning_core.selection import SelectOptions, block, select
from pruning_core.spec import PruneSpec
from tests.core.nets import export


class WideNet(nn.Module):
    """Wide enough that the kernels' step (8 or 16) applies to every group."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 96, 3, padding=1)
        self.c2 = nn.Conv2d(96, 160, 3, padding=1, stride=2)
        self.dw = nn.Conv2d(160, 160, 3, padding=1, groups=160)
        self.c3 = nn.Conv2d(160, 128, 1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.dw(torch.relu(self.c2(x))))
        x = torch.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def wide_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return export(WideNet(), (torch.randn(1, 3, 32, 32),), tmp_path_factory.mktemp("w") / "wide.onnx", ["x"])


def _setup(path: Path, spec: PruneSpec):
    an = analyze(graph.load(path))
    return an, score(ScoreContext(an, spec, None, None))


def test_auto_widths_are_multiples_of_the_kernel_step(wide_onnx: Path, tmp_path: Path) -> None:
    res = api.prune(wide_onnx, {"target": {"flops": 0.5}}, tmp_path)
    rep = res.report
    step = rep["runtime"]["step"]
    assert rep["runtime"]["round_to"] == "auto" and step == latency.auto_step(latency.RuntimeConfig())
    pruned = [g for g in rep["groups"] if g["kept"] < g["total"]]
    assert pruned, "nothing was pruned"
    assert all(g["kept"] % step == 0 for g in pruned if g["total"] >= 4 * step), pruned
    assert abs(rep["macs"]["removed_fraction"] - 0.5) <= 0.01
    assert rep["verify"]["passed"]


def test_auto_falls_back_to_finer_steps_to_meet_the_target(mixnet_onnx: Path) -> None:
    """A small model whose few wide steps cannot reach the target within 1 % gets a finer step."""
    spec = PruneSpec(target={"flops": 0.3})
    an, scores = _setup(mixnet_onnx, spec)
    removed = select(an, scores, SelectOptions.from_spec(spec, step=64))
    assert abs(1 - an.macs(removed) / an.macs() - 0.3) <= 0.01 * 0.3


def test_head_groups_round_their_width_not_their_count(attn_onnx: Path) -> None:
    an = analyze(graph.load(attn_onnx), "heads")
    heads = [g for g in an.groups if g.prunable and block(g) > 1]
    assert heads, "the attention net has head groups"
    from pruning_core.selection import _allowed

    for g in heads:  # a head of 8 dims is a multiple of a step of 8: every head count is allowed
        allowed = _allowed(g, 0.9, 8, auto=True)
        assert all((g.size - c) * block(g) % 8 == 0 for c in allowed)
        assert len(allowed) == len(_allowed(g, 0.9, 1))


def test_latency_controller_meets_a_measured_goal(wide_onnx: Path) -> None:
    """The controller corrects its aim by what is measured: here a runtime whose time is an
    overhead plus a MAC-proportional part (so the linear model alone misses the goal)."""
    spec = PruneSpec(target={"latency": 0.3}, round_to=1)
    an, scores = _setup(wide_onnx, spec)
    table = _fake_table(an)
    base = an.macs()
    calls: list[np.ndarray] = []

    def time_pair(r: np.ndarray, longer: bool) -> tuple[float, float]:
        calls.append(r)
        return 10.0, 4.0 + 6.0 * an.macs(r) / base   # 40 % of the time does not shrink

    opts = SelectOptions.from_spec(spec, table=table)
    removed, info = meet_latency(an, scores, opts, time_pair)
    after = 4.0 + 6.0 * an.macs(removed) / base
    assert abs(after - 7.0) <= AIM * 7.0, info
    # every try timed once, the accepted one (and only a try within the aim) a second time
    assert info["met"] and 2 <= len(info["tries"]) == len(calls) - 1 and info["tries"][-1]["confirmed"]
    with pytest.raises(UnreachableTargetError, match="the most measured was"):
        meet_latency(an, scores, SelectOptions.from_spec(PruneSpec(target={"latency": 0.7}, round_to=1), table=table),
                     time_pair)


def test_latency_controller_does_not_accept_a_lucky_timing(wide_onnx: Path) -> None:
    """A try whose first (short) timing lands on the goal but whose longer timing does not is not
    accepted: the search goes on from the longer timing."""
    spec = PruneSpec(target={"latency": 0.3}, round_to=1)
    an, scores = _setup(wide_onnx, spec)
    base = an.macs()
    lucky = {"left": 1}

    def time_pair(r: np.ndarray, longer: bool) -> tuple[float, float]:
        true = 4.0 + 6.0 * an.macs(r) / base
        if not longer and lucky["left"]:   # the first short timing says "exactly on the goal"
            lucky["left"] -= 1
            return 10.0, 7.0
        return 10.0, true

    removed, info = meet_latency(an, scores, SelectOptions.from_spec(spec, table=_fake_table(an)), time_pair)
    first = info["tries"][0]
    assert first["confirmed"] and abs(first["after_ms"] - 7.0) > AIM * 7.0   # the longer timing counted
    assert info["met"] and len(info["tries"]) >= 2
    assert abs(4.0 + 6.0 * an.macs(removed) / base - 7.0) <= AIM * 7.0


class _MacTable:
    """A stand-in latency table of MACs (the controller is tested, not the timer)."""

    def __init__(self, an) -> None:
        self.an, self.base = an, float(an.macs())

    def removed_fraction(self, removed: np.ndarray) -> float:
        return 1 - self.an.macs(removed) / self.base

    def ms_per_channel(self, groups) -> dict[int, float]:
        out = {}
        for g in groups:
            r = np.zeros(self.an.n_channels, bool)
            r[g.channels[g.removable]] = True
            out[g.id] = (self.base - self.an.macs(r)) / max(1, int(r.sum()))
        return out


def _fake_table(an) -> _MacTable:
    return _MacTable(an)


def test_latency_table_measures_every_costly_node_and_caches(wide_onnx: Path, tmp_path: Path) -> None:
    an = analyze(graph.load(wide_onnx))
    rt = latency.RuntimeConfig(threads=1)
    table = latency.LatencyTable(an, rt, tmp_path)
    assert len(table.nodes) == 5 and (table.ms0 > 0).all()  # 4 convs (one depthwise) and the Gemm
    assert table.removed_fraction(np.zeros(an.n_channels, bool)) == 0.0
    removed = np.zeros(an.n_channels, bool)
    grp = max((g for g in an.groups if g.prunable), key=lambda g: g.size)
    removed[grp.channels[: grp.size // 2]] = True
    assert 0 < table.removed_fraction(removed) < 1
    rows = table.layers(removed)
    assert {r["op"] for r in rows} == {"Conv", "Gemm"}
    assert any(r["macs_after"] < r["macs_before"] for r in rows)
    assert all(r["latency_ms_before"] > 0 and r["latency_ms_after"] > 0 for r in rows)
    again = latency.LatencyTable(an, rt, tmp_path)  # the disk cache answers: nothing re-timed
    assert again.timer.measured == 0 and np.allclose(again.ms0, table.ms0)


def test_report_carries_speed_figures(wide_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, rep_path = tmp_path / "o.onnx", tmp_path / "r.json"
    assert main(["prune", str(wide_onnx), "-o", str(out), "--flops", "0.4", "--threads", "1",
                 "--report", str(rep_path)]) == 0
    rep = json.loads(rep_path.read_text())
    lat = rep["latency_ms"]
    assert lat["before"] > 0 and lat["after"] > 0 and lat["runs"] >= 5
    assert lat["speedup"] == pytest.approx(lat["before"] / lat["after"], rel=1e-3)
    mac_ratio = rep["macs"]["before"] / rep["macs"]["after"]
    assert lat["efficiency"] == pytest.approx(lat["speedup"] / mac_ratio, rel=1e-3)
    assert lat["spread"]["before"][0] <= lat["before"] <= lat["spread"]["before"][1]
    assert rep["runtime"] == {"provider": "cpu", "threads": 1, "batch": 1, "round_to": "auto",
                              "step": latency.auto_step(latency.RuntimeConfig())}
    assert len(rep["layers"]) == 5 and rep["latency_target"] is None
    assert "speed-up" in capsys.readouterr().out


def test_latency_target_end_to_end(wide_onnx: Path, tmp_path: Path) -> None:
    """On the real runtime: either met within the tolerance (measured) or refused with the
    fraction reached; never a silent miss."""
    try:
        res = api.prune(wide_onnx, {"target": {"latency": 0.3}, "runtime": {"threads": 1}}, tmp_path)
    except UnreachableTargetError as e:
        assert "latency" in str(e) and 0 <= e.best < 1
        return
    info = res.report["latency_target"]
    assert info["met"] and info["goal"] == 0.3
    last = min(info["tries"], key=lambda t: abs(t["removed_fraction"] - 0.3))
    assert abs(last["after_ms"] - 0.7 * last["before_ms"]) <= TOLERANCE * 0.7 * last["before_ms"]
    assert res.report["verify"]["passed"]


def test_slower_result_fails_unless_params_only() -> None:
    def fig(b: float, a: float) -> dict:
        st = lambda m: {"median_ms": m, "p25_ms": m * 0.98, "p75_ms": m * 1.02, "runs": 9}  # noqa: E731
        return {"latency_before": st(b), "latency_after": st(a)}

    slow = lambda: (fig(1.0, 1.3)["latency_before"], fig(1.0, 1.3)["latency_after"])  # noqa: E731
    with pytest.raises(api.SlowerThanOriginalError, match="slower than the original"):
        api._refuse_slower(PruneSpec(target={"flops": 0.3}), fig(1.0, 1.3), slow)
    api._refuse_slower(PruneSpec(target={"params": 0.3}), fig(1.0, 1.3), slow)
    figures = fig(1.0, 1.3)   # not confirmed by the second, longer timing: shipped, with it
    api._refuse_slower(PruneSpec(target={"flops": 0.3}), figures, lambda: (fig(1.0, 0.8)["latency_before"],
                                                                           fig(1.0, 0.8)["latency_after"]))
    assert figures["latency_after"]["median_ms"] == 0.8


@pytest.mark.parametrize("args,msg", [
    (["--latency", "1.5"], "between 0 and 1"),
    (["--round-to", "0"], "'auto' or a positive integer"),
    (["--threads", "0"], "positive integer"),
    (["--provider", "cuda"], None),
])
def test_bad_runtime_arguments_exit_2(wide_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                      args: list[str], msg: str | None) -> None:
    import onnxruntime as ort

    if args[0] == "--provider":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            pytest.skip("this machine has CUDA: the provider is available")
        msg = "not available on this worker"
    out = tmp_path / "o.onnx"
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["prune", str(wide_onnx), "-o", str(out), *args]))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_unknown_provider_is_a_spec_error() -> None:
    with pytest.raises(ValueError, match="provider"):
        PruneSpec(runtime={"provider": "tpu"})
    with pytest.raises(ValueError, match="needs device 'cuda'"):
        PruneSpec(runtime={"provider": "cuda"}, device="cpu")


def test_runtime_batch_measures_there_and_keeps_the_axis_dynamic(wide_onnx: Path, tmp_path: Path) -> None:
    import onnx

    dyn = tmp_path / "dyn.onnx"
    torch.manual_seed(0)
    torch.onnx.export(WideNet().eval(), (torch.randn(2, 3, 32, 32),), str(dyn), input_names=["x"], dynamo=False,
                      opset_version=17, dynamic_axes={"x": {0: "batch"}})
    res = api.prune(dyn, {"target": {"flops": 0.4}, "runtime": {"threads": 1, "batch": 3}}, tmp_path / "o")
    assert res.report["runtime"]["batch"] == 3 and res.report["fidelity"]["samples"] == 3
    m = onnx.load(res.artifacts["pruned.onnx"])
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    with pytest.raises(SpecError, match="fixed batch of 1"):
        api.prune(wide_onnx, {"target": {"flops": 0.4}, "runtime": {"batch": 3}}, tmp_path / "p")
    assert not (tmp_path / "p" / "pruned.onnx").exists()
