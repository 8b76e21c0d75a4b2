"""AutoBot gates (pruning_core/importance/autobot.py) and the soft MAC model (pruning_core/twin/flops.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pydantic import ValidationError

from pruning_core import api
from pruning_core.analysis.groups import analyze
from pruning_core.importance import CRITERIA, ScoreContext, score
from pruning_core.importance.autobot import GatedTwin, train_gates
from pruning_core.ir import graph as graph_mod
from pruning_core.selection import SelectOptions, select
from pruning_core.spec import PruneSpec
from pruning_core.surgery import apply
from pruning_core.twin.flops import SoftCost
from tests.core.training.test_recover import accuracy, digits_model

FAST = {"steps": 8, "batch_size": 8}


@pytest.mark.parametrize("net", ["mixnet_onnx", "attn_onnx"])
@pytest.mark.parametrize("kind", ["flops", "params"])
def test_soft_cost_equals_real_counter_at_01_gates(net: str, kind: str, request: pytest.FixtureRequest) -> None:
    an = analyze(graph_mod.load(request.getfixturevalue(net)))
    cost = SoftCost(an, kind)
    rng = np.random.default_rng(0)
    for p in (0.0, 0.2, 0.5, 0.9):
        removed = rng.random(an.n_channels) < p
        real = an.macs(removed) if kind == "flops" else an.params(removed)
        assert float(cost(torch.as_tensor(1.0 - removed))) == real
    # differentiable, and every gated channel costs something
    keep = torch.full((an.n_channels,), 0.5, dtype=torch.float64, requires_grad=True)
    cost(keep).backward()
    assert keep.grad is not None and (keep.grad >= 0).all() and keep.grad.sum() > 0


def test_registered_with_raw_gate_scores() -> None:
    crit = CRITERIA["autobot"]
    assert crit.prepare is not None and crit.normalizer == "none"


def test_flops_target_met_through_api(tmp_path: Path) -> None:
    # data-free (generated inputs, distillation); the digits CNN's groups are fine-grained enough
    # for selection to land within 1 % (MixNet's coarse grouped-conv groups step by ~6 % of MACs)
    path, *_ = digits_model()
    msgs: list[str] = []

    def progress(stage: str, frac: float, msg: str | None) -> None:
        if stage == "score" and msg and msg.startswith("autobot step"):
            msgs.append(msg)

    cases = [("flops", "macs", 0.3), ("flops", "macs", 0.5), ("params", "params", 0.4)]
    for kind, figure, target in cases:  # the soft cost model follows the target's kind
        r = api.prune(path, {"measure": False, "target": {kind: target}, "criterion": "autobot", "autobot": FAST,
                             "input_shapes": {"x": [8, 1, 8, 8]}}, tmp_path / f"{kind}{target}", progress=progress)
        assert abs(r.report[figure]["removed_fraction"] - target) <= 0.01 * target
        assert r.report["verify"]["passed"]
        assert all(g["kept"] >= 1 for g in r.report["groups"])
    assert len(msgs) == len(cases) * FAST["steps"]  # progress per step


def test_gates_shared_across_residual_group(mixnet_onnx: Path) -> None:
    # MixNet's x + relu(bn(conv(x))) -> depthwise couples the outputs of c1, c2 and dw (three
    # producers, BatchNorm folded into the convs by the exporter) into one group, consumed by c2,
    # dw and pw: one gate vector for all of them
    spec = PruneSpec.model_validate({"target": {"flops": 0.4}, "criterion": "autobot", "autobot": FAST})
    an = analyze(graph_mod.load(mixnet_onnx))
    res = next(g for g in an.groups if g.prunable and sum(p.producer for p in g.places) >= 3)
    ctx = ScoreContext(an, spec)
    scores = score(ctx)
    gates = ctx.cache["autobot"]["gates"][res.id]
    assert gates.shape == (res.size,)
    assert not np.allclose(gates, 0.9)  # trained
    rows = CRITERIA["autobot"].fn(ctx, res)
    assert rows.shape == (len(res.places), res.size) and (rows == rows[0]).all()
    np.testing.assert_allclose(scores[res.id], gates)

    trainable = np.zeros(an.n_channels, dtype=bool)
    trainable[res.channels] = True
    net = GatedTwin(an, trainable)
    net.set_keep(torch.as_tensor(np.where(trainable, np.linspace(0.1, 0.9, an.n_channels), 1.0)))
    seen = []
    for _g, (tensor, owner) in net.layout.items():
        if np.isin(owner, res.channels).any():
            lay = net.layout_of(tensor)
            for cid in res.channels:
                pos = owner == cid
                seen.append(tensor)
                assert np.allclose(lay[pos], np.linspace(0.1, 0.9, an.n_channels)[cid])
    assert len(set(seen)) >= 3  # the group is consumed (gated) in three tensors


def test_01_gated_model_equals_pruned_model(mixnet_onnx: Path) -> None:
    spec = PruneSpec.model_validate({"target": {"flops": 0.5}, "criterion": "l1"})
    g = graph_mod.load(mixnet_onnx)
    an = analyze(g)
    removed = select(an, score(ScoreContext(an, spec)), SelectOptions("flops", 0.5))
    pruned = apply(an, removed)
    net = GatedTwin(an, np.ones(an.n_channels, dtype=bool))
    net.set_keep(torch.as_tensor(1.0 - removed.astype(np.float32)))
    x = np.random.default_rng(0).standard_normal(g.shape("x")).astype(np.float32)
    with torch.no_grad():
        gated = net({"x": torch.from_numpy(x)})[0].numpy()
    sess = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(gated, sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_01_gated_accuracy_equals_pruned_accuracy_and_beats_l1_on_digits(tmp_path: Path) -> None:
    path, xtr, ytr, xte, yte = digits_model()
    spec = {"measure": False, "target": {"flops": 0.6}, "criterion": "autobot", "input_shapes": {"x": [32, 1, 8, 8]},
            "autobot": {"steps": 60, "batch_size": 32}}  # 30 steps tied l1 exactly on one set of wheels
    np.savez(tmp_path / "calib.npz", x=xtr[:256], labels=ytr[:256])
    r = api.prune(path, spec, tmp_path / "ab", data=tmp_path / "calib.npz")
    pruned_acc = accuracy(r.artifacts["pruned.onnx"], xte, yte)
    l1 = api.prune(path, {**spec, "criterion": "l1"}, tmp_path / "l1")
    assert pruned_acc > accuracy(l1.artifacts["pruned.onnx"], xte, yte)

    # the same keep-mask as 0/1 gates on the gated twin of the original
    g = graph_mod.load(path, spec["input_shapes"])
    an = analyze(g)
    removed = np.zeros(an.n_channels, dtype=bool)
    for grp in r.report["groups"]:
        if grp["kept_channels"] is not None:
            chans = an.groups[grp["id"]].channels
            removed[chans] = True
            removed[chans[grp["kept_channels"]]] = False
    net = GatedTwin(an, np.ones(an.n_channels, dtype=bool))
    net.set_keep(torch.as_tensor(1.0 - removed.astype(np.float32)))
    pad = (-len(xte)) % 32
    xp = np.concatenate([xte, np.zeros((pad, *xte.shape[1:]), xte.dtype)])
    with torch.no_grad():
        preds = np.concatenate([net({"x": torch.from_numpy(xp[i:i + 32])})[0].argmax(1).numpy()
                                for i in range(0, len(xp), 32)])[: len(xte)]
    assert float((preds == yte).mean()) == pruned_acc


def test_data_free_training_reports(mixnet_onnx: Path) -> None:
    spec = PruneSpec.model_validate({"target": {"flops": 0.5}, "criterion": "autobot",
                                     "autobot": {"steps": 4, "batch_size": 2}})
    an = analyze(graph_mod.load(mixnet_onnx))
    out = train_gates(ScoreContext(an, spec))
    assert out["steps"] == 4 and out["seconds"] > 0 and np.isfinite(out["best_loss"])
    assert all(((v > 0) & (v <= 1)).all() for v in out["gates"].values())


@pytest.mark.parametrize("bad, field", [
    ({"lr": -0.5}, "autobot.lr"), ({"lr": 0}, "autobot.lr"), ({"steps": 0}, "autobot.steps"),
    ({"steps": -3}, "autobot.steps"), ({"batch_size": 0}, "autobot.batch_size"),
    ({"beta": -1}, "autobot.beta"), ({"gamma": -0.1}, "autobot.gamma"), ({"momentum": 0.9}, "autobot.momentum"),
])
def test_bad_autobot_values_rejected(bad: dict, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        PruneSpec.model_validate({"criterion": "autobot", "autobot": bad})
    assert field in str(e.value)
