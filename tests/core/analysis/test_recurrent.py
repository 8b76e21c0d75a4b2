"""LSTM / GRU / RNN: the hidden size is a group (gate blocks of W, R, B, the recurrence's own
columns, the initial states), the input side a consumer; verified exactly against the masked
original (gate rows zeroed), through both torch exporters, one and two directions."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from pruning_core import api
from tests.core.nets import verify_catches_a_wrong_cut

CELLS = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}


class Seq(nn.Module):
    """A feature layer, a two-layer recurrent stack, a head on the last step."""

    def __init__(self, cell: type[nn.Module], bidirectional: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 12)
        self.rnn = cell(12, 16, num_layers=2, bidirectional=bidirectional, batch_first=True)
        self.head = nn.Linear(32 if bidirectional else 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(torch.relu(self.inp(x)))
        return self.head(y[:, -1])


def _export(path: Path, cell: str, bidirectional: bool, dynamo: bool) -> Path:
    torch.manual_seed(0)
    model = Seq(CELLS[cell], bidirectional).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 7, 6),), str(path), input_names=["x"], output_names=["y"],
                          dynamo=dynamo, opset_version=18)
    return path


def _recurrent_nodes(path: Path) -> list[onnx.NodeProto]:
    return [n for n in onnx.load(str(path)).graph.node if n.op_type in CELLS]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_hidden_size_prunes_exactly(cell: str, bidirectional: bool, dynamo: bool, tmp_path: Path) -> None:
    src = _export(tmp_path / "m.onnx", cell, bidirectional, dynamo)
    res = api.prune(src, {"target": {"channels": 0.3}, "criterion": "l1", "measure": False}, tmp_path / "out")
    assert res.report["verify"]["passed"] and res.report["verify"]["max_error"] <= 1e-5
    out = Path(res.artifacts["pruned.onnx"])
    nodes = _recurrent_nodes(out)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    if nodes:  # torch's dynamo exporter writes nn.RNN as a loop of MatMuls: then the Linear rules apply
        hidden = [next(a.i for a in n.attribute if a.name == "hidden_size") for n in nodes]
        assert any(h < 16 for h in hidden), hidden  # a recurrent hidden size lost units
        for n, h in zip(nodes, hidden, strict=True):
            gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[n.op_type]
            if n.input[2] in inits:  # R: a gate block of h rows each, h columns
                assert inits[n.input[2]].shape[-2:] == (gates * h, h)
    x = np.random.default_rng(3).standard_normal((2, 7, 6)).astype(np.float32)
    before = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    after = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert after.shape == before.shape


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_verification_of_a_recurrent_cut_is_not_vacuous(cell: str, tmp_path: Path) -> None:
    """Zeroing the gate rows is what makes the masked original equal the cut: told that other
    units went, the check fails."""
    verify_catches_a_wrong_cut(_export(tmp_path / "m.onnx", cell, False, False), 16, 4)


def _single(tmp_path: Path, op: str, **extra: object) -> Path:
    """X -> {op} -> Linear head, written by hand (initial state and activations as given)."""
    rng = np.random.default_rng(0)
    g, h, i = {"LSTM": 4, "GRU": 3, "RNN": 1}[op], 8, 5
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("W", (1, g * h, i)), ("R", (1, g * h, h)), ("B", (1, 2 * g * h)), ("head", (h, 3)))]
    ins = ["x", "W", "R", "B", "", ""]
    if "h0" in extra:
        inits.append(numpy_helper.from_array(np.full((1, 2, h), extra.pop("h0"), np.float32), "h0"))
        ins[5] = "h0"
    nodes = [helper.make_node(op, ins, ["y", "yh"], hidden_size=h, **extra),
             helper.make_node("Squeeze", ["yh"], ["s"]), helper.make_node("MatMul", ["s", "head"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 2, i])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [2, 3])], inits)
    path = tmp_path / f"{op}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.mark.parametrize(("op", "extra", "why"), [
    ("LSTM", {"h0": 0.5}, "a non-zero initial state"),
    ("RNN", {"activations": ["Sigmoid"]}, "gate activations other than the defaults"),
])
def test_hidden_units_that_would_not_stay_zero_stay(tmp_path: Path, op: str, extra: dict, why: str) -> None:
    an = api.analyze(_single(tmp_path, op, **extra))
    hidden = [g for g in an["groups"] if any(p["tensor"] == "R" for p in g["places"])]
    assert hidden and not hidden[0]["prunable"] and any(why in r for r in hidden[0]["reasons"])


def test_zero_initial_state_is_sliced_with_the_units(tmp_path: Path) -> None:
    res = api.prune(_single(tmp_path, "GRU", h0=0.0), {"target": {"channels": 0.3}, "round_to": 1,
                                                       "measure": False}, tmp_path / "out")
    assert res.report["verify"]["passed"] and res.report["verify"]["max_error"] <= 1e-6
    inits = {t.name: t for t in onnx.load(str(res.artifacts["pruned.onnx"])).graph.initializer}
    h = inits["R"].dims[2]
    assert h < 8 and list(inits["h0"].dims) == [1, 2, h]


def test_twin_criteria_on_a_recurrent_graph_say_what_to_use(tmp_path: Path) -> None:
    from pruning_core.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError) as e:
        api.prune(_export(tmp_path / "m.onnx", "LSTM", False, False),
                  {"target": {"channels": 0.3}, "criterion": "taylor", "measure": False}, tmp_path / "out")
    assert "LSTM" in str(e.value) and "a recurrent graph" in str(e.value) and "l1" in str(e.value)
