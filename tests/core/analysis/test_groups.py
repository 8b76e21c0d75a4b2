"""Dependency groups on hand-written nets: the coupling each op rule must produce.

The torchscript exporter renames folded weights (``onnx::Conv_59``); biases keep their names,
so groups are identified by them."""

from __future__ import annotations

from pathlib import Path

from pruning_core.analysis import groups
from pruning_core.ir import graph


def _group_with(an: groups.Analysis, tensor: str, axis: int = 0) -> groups.Group:
    hits = [g for g in an.groups if any(p.tensor == tensor and p.axis == axis for p in g.places)]
    assert len(hits) == 1, f"{tensor}:{axis} in {len(hits)} groups"
    return hits[0]


def _tensors(g: groups.Group) -> set[str]:
    return {p.tensor for p in g.places}


def test_mixnet_coupling(mixnet_onnx: Path) -> None:
    an = groups.analyze(graph.load(mixnet_onnx))
    # residual c1 + c2 (BN folded), the depthwise conv passes it through: one group of 16
    res = _group_with(an, "dw.bias")
    assert res.size == 16 and res.prunable
    assert any(p.tensor == "pw.weight" and p.axis == 1 for p in res.places)  # consumer columns
    assert sum(p.producer for p in res.places) >= 2  # c1 and c2 both produce it
    # grouped conv (4 groups of 6): pw's 24 outputs prune the same in-group index of each group
    pw = _group_with(an, "pw.bias")
    assert pw.size == 6 and all(p.index.shape[1] == 4 for p in pw.places if p.tensor.startswith("pw"))
    assert any(p.tensor == "gc.weight" and p.axis == 1 for p in pw.places)
    # SE gate: se2's outputs multiply gc's outputs: coupled; c3 / c4 consume them
    gc = _group_with(an, "gc.bias")
    assert {"se2.weight", "se2.bias", "se1.weight", "c3.weight", "c4.weight"} <= _tensors(gc)
    # concat: c3 and c4 stay separate groups of 8, each owning 4x4 Linear columns per channel
    for name in ("c3.bias", "c4.bias"):
        g = _group_with(an, name)
        assert g.size == 8 and g.prunable
        fc = [p for p in g.places if p.tensor == "fc.weight"]
        assert fc and fc[0].axis == 1 and fc[0].index.shape[1] == 64
    # the classifier reaches the graph output: not prunable, and it says why
    head = _group_with(an, "fc.bias")
    assert not head.prunable and "graph output" in head.reasons[0]


def test_attention_heads_are_groups(attn_onnx: Path) -> None:
    an = groups.analyze(graph.load(attn_onnx))
    heads = _group_with(an, "q.bias")
    # 4 heads of 8 dims: q, k, v rows and o's columns move together, head by head
    assert heads.size == 4 and heads.prunable
    assert {"q.bias", "k.bias", "v.bias"} <= _tensors(heads)
    assert all(p.index.shape[1] == 8 for p in heads.places)
    assert _group_with(an, "up.bias").size == 64
    # the residual stream adds the graph input x, which cannot lose channels
    hidden = _group_with(an, "o.bias")
    assert hidden.size == 32 and not hidden.prunable and "'x'" in hidden.reasons[0]


def test_attention_dims_mode(attn_onnx: Path) -> None:
    an = groups.analyze(graph.load(attn_onnx), attention_heads="dims")
    dims = _group_with(an, "q.bias")
    # per dimension: 8 channels, each one dim of every head
    assert dims.size == 8 and all(p.index.shape[1] == 4 for p in dims.places)
