"""OBSPA at bounded cost: Hessian rows are a capped, stratified sample gathered before unfolding,
the data-free synthesis has a budget, and none of it changes what pruning guarantees."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from pruning_core import api
from pruning_core.importance import obspa
from pruning_core.importance.unfold import conv_unfold, dense_unfold, sample
from pruning_core.ir import graph
from pruning_core.runtime import calibration


def _export(model: nn.Module, example: torch.Tensor, path: Path, dynamic: bool = False) -> Path:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["x"], output_names=["y"], dynamo=False,
                          opset_version=17, do_constant_folding=False,
                          dynamic_axes={"x": {0: "batch"}} if dynamic else None)
    return path


class WideConv(nn.Module):
    """A small fully convolutional net on a large image: 16384 positions per sample at full size."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.c3 = nn.Conv2d(16, 8, 1)
        self.c4 = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(torch.relu(self.dw(x))))
        return self.c4(x)


def test_sample_is_capped_even_and_seeded() -> None:
    rng = np.random.default_rng
    assert sample(4, 100, 400, rng(0)) is None                    # all rows fit: no sampling
    idx = sample(3, 1000, 100, rng(0))
    assert idx is not None and len(idx) == 100 and len(np.unique(idx)) == 100
    per_item = np.bincount(idx // 1000, minlength=3)
    assert per_item.max() - per_item.min() <= 1                  # even over the batch items
    pos = np.sort(idx[idx < 1000])                                # stratified over the positions
    assert np.all(np.diff(pos) < 2 * 1000 / len(pos))
    assert np.array_equal(idx, sample(3, 1000, 100, rng(0)))
    assert not np.array_equal(idx, sample(3, 1000, 100, rng(1)))


@pytest.mark.parametrize("stride,dil,group", [(1, 1, 1), (2, 1, 1), (1, 2, 4)])
def test_sampled_patches_are_rows_of_the_full_unfolding(stride: int, dil: int, group: int) -> None:
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride, stride], dilations=[dil, dil],
                                 pads=[1, 2, 1, 0], group=group)
    x = np.random.default_rng(0).standard_normal((2, 8, 11, 9)).astype(np.float32)
    rows, _ = conv_unfold(node, x.shape, (4, 8 // group, 3, 3))
    full = rows.take(x, None)
    assert len(full) == rows.items(x.shape) * rows.per_item(x.shape)
    idx = sample(2, rows.per_item(x.shape), 17, np.random.default_rng(3))
    assert np.array_equal(rows.take(x, idx), full[idx])
    # dense: features along axis 1 of a [B, F, T] activation
    d = dense_unfold(1)
    a = x[:, :, :, 0]
    assert d.items(a.shape) == 2 and d.per_item(a.shape) == 11
    i = np.array([0, 5, 13, 21])
    assert np.array_equal(d.take(a, i), d.take(a, None)[i])


def test_hessian_rows_are_capped_and_pruning_stays_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 128x128 input gives 16384 patches per sample for c1: only ROWS of them per pool enter H,
    and the pruned model still verifies against the masked original and is compensated."""
    torch.manual_seed(0)
    path = _export(WideConv(), torch.randn(1, 3, 128, 128), tmp_path / "wide.onnx")
    monkeypatch.setattr(obspa, "ROWS", 512)
    spec = {"target": {"flops": 0.4}, "criterion": "obspa", "calibration": {"samples": 4}}
    seen: list[float] = []
    res = api.prune(path, spec, tmp_path / "o", progress=lambda s, f, m: seen.append(f) if s == "score" else None)
    st = res.report["criterion_stats"]
    assert st["rows_sampled"] and 0 < st["max_rows_per_pool"] <= 512 and st["rows_cap"] == 512
    assert st["consumers"] >= 4 and st["pool_samples"] == 4
    assert res.report["verify"]["passed"]
    assert len(seen) > 10                                        # progress per pool and consumer
    l1 = api.prune(path, {**spec, "criterion": "l1"}, tmp_path / "l")
    assert res.report["fidelity"]["cosine"] > l1.report["fidelity"]["cosine"]


def test_synthesis_budget_cuts_steps_then_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class BnNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.b(self.c(x))).flatten(1)

    g = graph.load(_export(BnNet(), torch.randn(1, 3, 32, 32), tmp_path / "bn.onnx", dynamic=True), {"x": [1, 3, 32, 32]})
    macs = calibration.metrics.count_macs(g)
    assert calibration.synth_plan(g, 128, 50) == (32, 50)         # cheap: the full synthesis
    monkeypatch.setattr(calibration, "SYNTH_MACS", 32 * 20 * macs)
    assert calibration.synth_plan(g, 128, 50) == (32, 20)         # steps first
    monkeypatch.setattr(calibration, "SYNTH_MACS", 15 * 4 * macs)
    assert calibration.synth_plan(g, 128, 50) == (4, 15)          # then samples
    monkeypatch.setattr(calibration, "SYNTH_MACS", 3 * macs)
    assert calibration.synth_plan(g, 128, 50) == (1, 3)           # at least one batch
    monkeypatch.setattr(calibration, "SYNTH_MACS", 1e15)
    monkeypatch.setattr(calibration, "SYNTH_BYTES", 3 * calibration._act_bytes(g))
    assert calibration.synth_plan(g, 128, 50) == (3, 50)          # activations held at once


def test_synthesis_runs_batch_one_graph_as_one_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph normalized at batch 1 folds that size into its flatten's Reshape: the synthesis
    normalizes it again at the stacked batch and gets the same inputs as batch by batch."""

    class BnFlat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.fc, self.b2 = nn.Linear(4 * 8 * 8, 6), nn.BatchNorm1d(6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b2(self.fc(torch.relu(self.b(self.c(x))).flatten(1)))

    torch.manual_seed(0)
    m = BnFlat()
    with torch.no_grad():
        m.b.running_mean.uniform_(-0.5, 0.5)
        m.b2.running_var.uniform_(0.5, 2.0)
    g = graph.load(_export(m, torch.randn(2, 3, 8, 8), tmp_path / "flat.onnx", dynamic=True), {"x": [1, 3, 8, 8]})
    made: list[object] = []
    real = calibration._batched_twin
    monkeypatch.setattr(calibration, "_batched_twin", lambda *a: made.append(real(*a)) or made[-1])
    fast = calibration._synthesize(g, 4, 0, 5, None)
    assert made and made[0] is not None
    monkeypatch.setattr(calibration, "_batched_twin", lambda *a: None)
    slow = calibration._synthesize(g, 4, 0, 5, None)
    assert fast is not None and slow is not None and len(fast) == len(slow) == 4
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_allclose(a.feeds["x"], b.feeds["x"], atol=1e-4)


def test_activation_budget_streams_without_changing_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below the row cap the pools only regroup the same rows: a tiny activation budget (one
    batch per pool, one consumer per pass) gives the scores of one pooled pass."""
    from pruning_core.analysis import groups
    from pruning_core.importance import ScoreContext, score
    from pruning_core.spec import PruneSpec

    torch.manual_seed(0)
    g = graph.load(_export(WideConv(), torch.randn(1, 3, 12, 12), tmp_path / "small.onnx"))

    def run() -> tuple[dict, dict]:
        ctx = ScoreContext(groups.analyze(g), PruneSpec(criterion="obspa", calibration={"samples": 6}))
        return score(ctx), ctx.cache["stats"]

    ref, st = run()
    assert st["passes"] == 1 and st["pool_samples"] == 6 and not st["rows_sampled"]
    monkeypatch.setattr(obspa, "ACT_BUDGET", 1)
    got, st2 = run()
    assert st2["passes"] == st2["consumers"] > 1 and st2["pool_samples"] == 1
    assert all(np.allclose(ref[k], got[k], rtol=1e-4) for k in ref)  # float32 products, other sums
