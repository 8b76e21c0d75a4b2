"""Criteria: every registered one prunes small nets through ``api.prune`` and passes verification,
and each changes which channels are kept where it should; OBSPA's compensation lowers the layer
reconstruction error against plain removal."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from pruning_core import api, surgery
from pruning_core.analysis import groups
from pruning_core.criteria_names import CRITERION_INFO as NAMES
from pruning_core.importance import CRITERIA, ScoreContext, score
from pruning_core.ir import graph
from pruning_core.runtime import calibration
from pruning_core.runtime.data import synthetic_inputs
from pruning_core.selection import SelectOptions, select
from pruning_core.spec import PruneSpec

FAST = {"samples": 4}


@pytest.fixture(autouse=True)
def _short_synthesis(monkeypatch: pytest.MonkeyPatch) -> None:
    """BatchNorm-matched data-free inputs with few steps: the tests check plumbing, not quality."""
    monkeypatch.setattr(calibration, "SYNTH_STEPS", 5)


class BnRes(nn.Module):
    """Conv + BN with a residual block; BN kept as its own node (exported without folding)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(x + self.b2(self.c2(x)))
        x = torch.relu(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(16, 16), nn.Linear(16, 24), nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))


def _export(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["x"], dynamo=False, opset_version=17,
                          do_constant_folding=False)
    return path


@pytest.fixture(scope="module")
def bnres(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    m = BnRes()
    with torch.no_grad():
        for bn in (m.b1, m.b2, m.b3):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
        # planted: c3's BN has three large scales, the rest small
        m.b3.weight.fill_(0.05)
        m.b3.weight[[1, 5, 7]] = 2.0
    return _export(m, torch.randn(2, 3, 8, 8), tmp_path_factory.mktemp("c") / "bnres.onnx")


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    m = MLP()
    with torch.no_grad():
        # channel 3 of l1: big incoming weights, no outgoing weight -> it does nothing
        m.l1.weight[3] = 5.0
        m.l2.weight[:, 3] = 0.0
    return _export(m, torch.randn(4, 16), tmp_path_factory.mktemp("m") / "mlp.onnx")


def _scores(path: Path, **spec) -> tuple[groups.Analysis, dict[int, np.ndarray], ScoreContext]:
    g = graph.load(path)
    an = groups.analyze(g)
    ctx = ScoreContext(an, PruneSpec.model_validate({"calibration": FAST, **spec}))
    return an, score(ctx), ctx


def _group(an: groups.Analysis, tensor: str) -> groups.Group:
    return next(gr for gr in an.groups if any(p.producer and p.tensor == tensor for p in gr.places))


def _l1_tensor(an: groups.Analysis) -> str:
    """The initializer name of l1's weight (the exporter names MatMul/Gemm weights differently)."""
    return next(p.tensor for gr in an.groups for p in gr.places
                if p.producer and an.graph.inits[p.tensor].shape in ((16, 16),) and gr.size == 16)


# ------------------------------------------------------------------------------ every criterion


def test_names_match_registry() -> None:
    assert set(NAMES) == set(CRITERIA)
    for name, crit in CRITERIA.items():
        assert crit.needs_data == NAMES[name][0] and crit.doc


@pytest.mark.parametrize("crit", sorted(NAMES))
@pytest.mark.parametrize("net", ["bnres", "attn_onnx"])
def test_criterion_prunes_and_verifies(crit: str, net: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    path = request.getfixturevalue(net)
    spec = {"measure": False, "target": {"flops": 0.3}, "criterion": crit, "calibration": FAST,
            "autobot": {"steps": 10, "batch_size": 4}}  # gate training: a few steps are enough here
    res = api.prune(path, spec, tmp_path)
    assert res.report["verify"]["passed"]
    assert 0.2 <= res.report["macs"]["removed_fraction"] <= 0.4  # tiny nets: coarse channel steps
    onnx.checker.check_model(onnx.load(res.artifacts["pruned.onnx"]), full_check=True)


# ------------------------------------------------------------------------------ what each one keeps


def test_bn_scale_keeps_planted_large_gammas(bnres: Path) -> None:
    an, sc, _ = _scores(bnres, criterion="bn_scale")
    s = sc[_group(an, "c3.weight").id]
    assert set(np.argsort(s)[-3:]) == {1, 5, 7}


def test_random_is_seeded(bnres: Path) -> None:
    _, a, _ = _scores(bnres, criterion="random", seed=0)
    _, b, _ = _scores(bnres, criterion="random", seed=0)
    _, c, _ = _scores(bnres, criterion="random", seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_fpgm_differs_from_l1_on_crafted_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = MLP()
    with torch.no_grad():
        v = torch.randn(16)
        m.l1.weight[:8] = 3 * v + 0.01 * torch.randn(8, 16)  # large, but near one another (redundant)
        m.l1.weight[8:] = 0.3 * torch.randn(8, 16)            # small, spread out
        m.l2.weight.fill_(0.1)
    path = _export(m, torch.randn(4, 16), tmp_path / "crafted.onnx")
    an, fp, _ = _scores(path, criterion="fpgm")
    _, l1, _ = _scores(path, criterion="l1")
    gid = _group(an, _l1_tensor(an)).id
    assert set(np.argsort(fp[gid])[:8]) == set(range(8))      # fpgm drops the redundant cluster
    assert set(np.argsort(l1[gid])[:8]) == set(range(8, 16))  # l1 drops the small ones


def test_lamp_ranks_by_producer_energy(mlp: Path) -> None:
    """LAMP reads the producing layer only (l1 also counts bias and the consumer columns)."""
    an, sc, _ = _scores(mlp, criterion="lamp")
    name = _l1_tensor(an)
    s = sc[_group(an, name).id]
    energy = (an.graph.inits[name].astype(np.float64) ** 2).sum(axis=1)
    assert np.array_equal(np.argsort(s), np.argsort(energy))
    raw = s / s.max()
    assert np.isclose(raw.max(), 1.0) and (raw > 0).all()


def test_hessian_criteria_are_informative(mlp: Path) -> None:
    for crit in ("grasp", "crop"):
        _, sc, _ = _scores(mlp, criterion=crit)
        assert all(np.isfinite(v).all() for v in sc.values())
        assert any(np.ptp(v) > 0 for v in sc.values())


@pytest.mark.parametrize("crit", ["taylor", "snip", "synflow", "obspa"])
def test_functionless_channel_goes_first(mlp: Path, crit: str) -> None:
    """Channel 3 of l1 has the largest weights but no outgoing weight: l1 keeps it, criteria that
    see the function drop it first."""
    an, sc, _ = _scores(mlp, criterion=crit)
    _, l1, _ = _scores(mlp, criterion="l1")
    gid = _group(an, _l1_tensor(an)).id
    assert int(np.argmax(l1[gid])) == 3
    s = sc[gid]
    assert s[3] <= s.min() + 1e-9 * s.max() and s.max() > 0


def test_taylor_uses_labels(mlp: Path) -> None:
    g = graph.load(mlp)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, *g.shape("x")[1:])).astype(np.float32)
    an = groups.analyze(g)
    a = score(ScoreContext(an, PruneSpec(criterion="taylor"), {"x": x}, np.zeros(8, np.int64)))
    b = score(ScoreContext(an, PruneSpec(criterion="taylor"), {"x": x}, np.ones(8, np.int64)))
    assert any(not np.allclose(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ OBSPA


def _refit_errors(path: Path, consumer: str, flops: float) -> tuple[float, float, dict]:
    """Layer reconstruction error of ``consumer`` (weight initializer) on fresh real inputs:
    compensated kept columns vs the plain kept columns, both against the original layer."""
    g = graph.load(path)
    an = groups.analyze(g)
    spec = PruneSpec(criterion="obspa", target={"flops": flops}, calibration={"samples": 64})
    ctx = ScoreContext(an, spec)
    removed = select(an, score(ctx), SelectOptions("flops", flops))
    plain = surgery.apply(an, removed)
    comp = CRITERIA["obspa"].compensate(ctx, removed, plain)
    node = next(n for n in g.nodes if len(n.input) > 1 and n.input[1] == consumer)
    x_name = node.input[0]
    xs = [v[x_name] for _, v in calibration.capture(g, [x_name], calibration.batches(g, samples=16, seed=99))]
    x = np.concatenate(xs).astype(np.float64)
    w = g.inits[consumer].astype(np.float64)
    conv = node.op_type == "Conv"
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    ax_in = 1 if conv or trans_b else 0
    keep_in = an.kept_positions(consumer, ax_in, removed)

    def weights(m: onnx.ModelProto) -> np.ndarray:
        return numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == consumer)).astype(np.float64)

    bias_name = node.input[2] if len(node.input) > 2 else None

    def out(wt: np.ndarray, xin: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        if conv:
            y = torch.nn.functional.conv2d(torch.from_numpy(xin), torch.from_numpy(wt), padding=1).numpy()
            return y + (0 if b is None else b[None, :, None, None])
        return xin @ (wt.T if trans_b else wt) + (0 if b is None else b)

    ref = out(w, x, g.inits[bias_name].astype(np.float64) if bias_name else None)
    xk = np.take(x, keep_in, axis=1 if conv else -1)
    keep_out = an.kept_positions(consumer, 1 - ax_in if not conv else 0, removed)
    ref = np.take(ref, keep_out, axis=1 if conv else -1)

    def bias(m: onnx.ModelProto) -> np.ndarray | None:
        if not bias_name:
            return None
        return numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == bias_name)).astype(np.float64)

    e_plain = float(((out(weights(plain), xk, bias(plain)) - ref) ** 2).mean())
    e_comp = float(((out(weights(comp), xk, bias(comp)) - ref) ** 2).mean())
    return e_plain, e_comp, ctx.cache["stats"]


def test_obspa_compensation_lowers_layer_error_linear(mlp: Path) -> None:
    g = graph.load(mlp)
    last = [n for n in g.nodes if n.op_type in ("Gemm", "MatMul")][1]  # l2: consumes l1's channels
    e_plain, e_comp, stats = _refit_errors(mlp, last.input[1], 0.5)
    assert e_comp < 0.8 * e_plain, (e_comp, e_plain)
    assert stats["largest_h"] >= 16 and stats["data"] == "data-free"


def test_obspa_compensation_lowers_layer_error_conv(bnres: Path) -> None:
    e_plain, e_comp, stats = _refit_errors(bnres, "c3.weight", 0.5)
    assert e_comp < 0.8 * e_plain, (e_comp, e_plain)
    assert stats["largest_h"] == 8 * 9 + 1  # unfolded 3x3 patches of 8 channels + bias column


def test_obspa_bounded_blocks(bnres: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A width limit splits H into channel-aligned blocks: same pipeline, smaller H."""
    from pruning_core.importance import obspa

    an = groups.analyze(graph.load(bnres))
    p = obspa.plan(an, max_cols=20)
    for c in p.consumers:
        for b in c.blocks:
            assert len(b.xcols) <= 20 or len(np.unique(b.owner)) == 1
            cids = b.owner[b.owner >= 0]
            for other in c.blocks:  # a channel never spans two blocks of one row set
                if other is not b and np.array_equal(other.rows, b.rows):
                    assert not set(cids) & set(other.owner[other.owner >= 0])


def test_obspa_column_blocks_still_compensate(bnres: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Layers wider than MAX_COLS get block-diagonal H (channel-aligned blocks, a shared bias):
    smaller H, and the refit still lowers the layer error."""
    from pruning_core.importance import obspa

    monkeypatch.setattr(obspa, "MAX_COLS", 20)
    e_plain, e_comp, stats = _refit_errors(bnres, "c3.weight", 0.5)
    assert stats["largest_h"] <= 21
    assert e_comp < 0.8 * e_plain, (e_comp, e_plain)


def test_obspa_cache_overflow_recollects(bnres: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no room to keep H between scoring and compensation, compensation collects it again."""
    from pruning_core.importance import obspa

    monkeypatch.setattr(obspa, "H_BUDGET", 1)
    e_plain, e_comp, stats = _refit_errors(bnres, "c3.weight", 0.5)
    assert stats["passes"] > 1 and e_comp < 0.8 * e_plain


def test_obspa_small_budget_same_scores_more_passes(bnres: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunking consumers to bound memory changes the number of passes, not the scores."""
    from pruning_core.importance import obspa

    _, ref, ctx = _scores(bnres, criterion="obspa")
    assert ctx.cache["stats"]["passes"] == 1
    monkeypatch.setattr(obspa, "H_BUDGET", 1)
    _, got, ctx2 = _scores(bnres, criterion="obspa")
    assert ctx2.cache["stats"]["passes"] > 1
    assert all(np.allclose(ref[k], got[k], rtol=1e-6) for k in ref)


def test_obspa_grouped_depthwise_flatten(mixnet_onnx: Path, tmp_path: Path) -> None:
    """Depthwise, grouped conv, SE gate and flatten -> Linear consumers: verified, compensated and
    closer to the original than plain l1 removal at the same target."""
    ob = api.prune(mixnet_onnx, {"measure": False, "target": {"flops": 0.4}, "criterion": "obspa", "calibration": {"samples": 16}},
                   tmp_path / "o")
    l1 = api.prune(mixnet_onnx, {"measure": False, "target": {"flops": 0.4}, "criterion": "l1"}, tmp_path / "l")
    assert ob.report["verify"]["passed"]
    # cosine to the original on shared synthetic inputs (measure is off: the nets run in 0.1 ms)
    x = synthetic_inputs(graph.load(mixnet_onnx), seed=7)
    ref = ort.InferenceSession(str(mixnet_onnx)).run(None, x)[0].ravel()

    def cos(res: api.PruneResult) -> float:
        out = ort.InferenceSession(str(res.artifacts["pruned.onnx"])).run(None, x)[0].ravel()
        return float(ref @ out / (np.linalg.norm(ref) * np.linalg.norm(out)))

    assert cos(ob) > cos(l1)


def test_calibration_has_no_batch_size() -> None:
    # it used to be accepted and ignored: calibration runs at the graph's own batch size
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="calibration.batch_size"):
        PruneSpec.model_validate({"calibration": {"samples": 8, "batch_size": 4}})
