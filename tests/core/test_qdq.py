"""QDQ graphs (onnxruntime.quantization's QuantizeLinear / DequantizeLinear around float ops) are
pruned through: the integer weights and their per-channel scales and zero points lose the same
positions, the result stays quantized and equals the masked original; criteria score the
dequantized weights, and OBSPA's refit goes back to the integer type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from pruning_core import api
from pruning_core.errors import UnsupportedOpError


class _Calib:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape, self.i = name, shape, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.i += 1
        rng = np.random.default_rng(self.i)
        return {self.name: rng.standard_normal(self.shape).astype(np.float32)} if self.i < 5 else None


SHAPES = {"mix": (1, 3, 16, 16), "attn": (1, 6, 32)}


@pytest.fixture(scope="module")
def qdq(mixnet_onnx: Path, attn_onnx: Path, tmp_path_factory: pytest.TempPathFactory):
    from onnxruntime import quantization as q

    d = tmp_path_factory.mktemp("qdq")
    src = {"mix": mixnet_onnx, "attn": attn_onnx}

    def make(net: str, per_channel: bool) -> Path:
        out = d / f"{net}-{'pc' if per_channel else 'pt'}.onnx"
        if not out.exists():
            q.quantize_static(str(src[net]), str(out), _Calib("x", SHAPES[net]), quant_format=q.QuantFormat.QDQ,
                              per_channel=per_channel, weight_type=q.QuantType.QInt8)
        return out

    return make


def _run(path: Path, xs: list[np.ndarray]) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.stack([s.run(None, {"x": x})[0] for x in xs])


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _dequantized_weights(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Integer weight -> (its values, its scale, the scale's axis), for every DequantizeLinear of
    an initializer."""
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    axis = lambda n: next((a.i for a in n.attribute if a.name == "axis"), 1)  # noqa: E731
    return {n.input[0]: (inits[n.input[0]], inits[n.input[1]], axis(n)) for n in m.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits}


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("net", ["mix", "attn"])
def test_qdq_graph_prunes_and_stays_quantized(qdq, net: str, per_channel: bool, tmp_path: Path) -> None:
    src = qdq(net, per_channel)
    res = api.prune(src, {"target": {"flops": 0.3}, "criterion": "l1", "measure": False}, tmp_path)
    out = Path(res.artifacts["pruned.onnx"])
    assert res.report["verify"]["passed"] and res.report["verify"]["max_error"] <= 1e-5
    assert 0.27 <= res.report["macs"]["removed_fraction"] <= 0.33
    before, after = _dequantized_weights(src), _dequantized_weights(out)
    assert before.keys() <= after.keys()  # every quantized weight is still quantized
    shrunk = sliced = 0
    for name, (w, scale, axis) in after.items():
        assert np.issubdtype(w.dtype, np.integer), name
        assert w.dtype == before.get(name, (w,))[0].dtype
        if scale.size > 1:  # per channel: one scale per position of the quantized axis
            assert scale.size == w.shape[axis], (name, scale.shape, w.shape, axis)
        if name in before and w.shape != before[name][0].shape:
            shrunk += 1
            if scale.size > 1 and w.shape[axis] < before[name][0].shape[axis]:
                sliced += 1  # the scales lost the same positions as the weight's quantized axis
    assert shrunk >= 2 and (sliced >= 1 or not per_channel)
    ops = lambda p: sorted(n.op_type for n in onnx.load(str(p)).graph.node if n.op_type.endswith("quantizeLinear"))  # noqa: E731
    assert len(ops(out)) >= len(ops(src))
    x = [np.random.default_rng(1).standard_normal(SHAPES[net]).astype(np.float32)]
    assert _run(out, x).shape == _run(src, x).shape


def test_scores_read_the_dequantized_weights(qdq, mixnet_onnx: Path, tmp_path: Path) -> None:
    """l1 on the per-channel QDQ net ranks like l1 on the float net (the integers alone, each in
    its own channel's scale, would not)."""
    from pruning_core.analysis.groups import analyze
    from pruning_core.importance import ScoreContext, score
    from pruning_core.ir import graph
    from pruning_core.ir.quant import float_value, weight_qparams
    from pruning_core.spec import PruneSpec

    spec = PruneSpec(target={"flops": 0.3})
    ranks = []
    for path in (mixnet_onnx, qdq("mix", True)):
        g = graph.load(path, {})
        an = analyze(g)
        scores = score(ScoreContext(an, spec))
        # the same group in both graphs: its producer's weight, less the quantizer's suffix
        ranks.append({grp.name.removesuffix("_quantized"): tuple(np.argsort(scores[grp.id]))
                      for grp in an.groups if grp.id in scores})
        if path != mixnet_onnx:
            q = weight_qparams(g)
            assert q, "no quantized weight found"
            name = next(iter(q))
            deq = float_value(g, name)
            assert deq.dtype == np.float64 and not np.array_equal(deq, g.inits[name].astype(np.float64))
    assert ranks[0].keys() == ranks[1].keys(), (ranks[0].keys(), ranks[1].keys())
    same = sum(ranks[0][k] == ranks[1][k] for k in ranks[0])
    assert same >= len(ranks[0]) - 1, ranks


def test_obspa_refit_is_requantized(qdq, tmp_path: Path) -> None:
    """OBSPA compensates through the DequantizeLinear views and writes integers back: the pruned
    QDQ net keeps its original's outputs as well as OBSPA does on the float net, and better
    than l1. Before the views were followed, 6 of 9 consumers were skipped (cosine 0.986)."""
    src = qdq("mix", True)
    xs = [np.random.default_rng(i).standard_normal(SHAPES["mix"]).astype(np.float32) for i in range(16)]
    ref = _run(src, xs)
    cos = {}
    for crit in ("l1", "obspa"):
        res = api.prune(src, {"target": {"flops": 0.3}, "criterion": crit, "measure": False}, tmp_path / crit)
        cos[crit] = _cos(_run(Path(res.artifacts["pruned.onnx"]), xs), ref)
        if crit == "obspa":
            assert res.report["criterion_stats"]["skipped_consumers"] == []
            for name, (w, _, _) in _dequantized_weights(Path(res.artifacts["pruned.onnx"])).items():
                assert np.issubdtype(w.dtype, np.integer), name
    assert cos["obspa"] >= 0.995 and cos["obspa"] > cos["l1"] + 0.01, cos


def test_twin_criteria_on_qdq_say_what_to_use(qdq, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from client.cli import main

    with pytest.raises(UnsupportedOpError) as e:
        api.prune(qdq("mix", False), {"target": {"flops": 0.3}, "criterion": "taylor", "measure": False}, tmp_path)
    assert "QDQ-quantized graph" in str(e.value) and "l1" in str(e.value)
    out = tmp_path / "cli.onnx"
    assert main(["prune", str(qdq("mix", False)), "-o", str(out), "--flops", "0.3", "--criterion", "autobot"]) == 2
    err = capsys.readouterr().err
    assert "QDQ-quantized graph" in err and "Traceback" not in err and not out.exists()
