"""prune(): targets, verification, surgery validity, and errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from pruning_core import api
from pruning_core.errors import ModelLoadError, SpecError, UnreachableTargetError
from pruning_core.ir import graph
from pruning_core.runtime.data import synthetic_inputs
from tests.core.nets import verify_catches_a_wrong_cut

# "measure": False where a test is about targets and the cut, not speed: these nets run in 0.1 ms,
# where the odd widths a 16-channel group needs can measure slower and be refused (that refusal is
# tested in tests/core/runtime/test_latency.py).


@pytest.mark.parametrize("kind,value", [("flops", 0.3), ("flops", 0.5), ("params", 0.4), ("channels", 0.3)])
@pytest.mark.parametrize("net", ["mixnet", "attn"])
def test_targets_met_and_verified(net: str, kind: str, value: float, request: pytest.FixtureRequest,
                                  tmp_path: Path) -> None:
    path = request.getfixturevalue(f"{net}_onnx")
    res = api.prune(path, {"measure": False, "target": {kind: value}}, tmp_path)
    rep = res.report
    if kind != "channels":
        got = rep["macs" if kind == "flops" else "params"]["removed_fraction"]
        assert abs(got - value) <= 0.02 * value, got
    assert rep["verify"]["passed"] and rep["verify"]["max_error"] <= rep["verify"]["tolerance"]
    m = onnx.load(res.artifacts["pruned.onnx"])
    onnx.checker.check_model(m, full_check=True)
    orig = onnx.load(path)
    assert [i.name for i in m.graph.input] == [i.name for i in orig.graph.input]
    assert [o.name for o in m.graph.output] == [o.name for o in orig.graph.output]
    x = synthetic_inputs(graph.load(path))
    a = ort.InferenceSession(str(path)).run(None, x)
    b = ort.InferenceSession(str(res.artifacts["pruned.onnx"])).run(None, x)
    assert [t.shape for t in a] == [t.shape for t in b]
    assert rep["macs"]["after"] < rep["macs"]["before"]
    assert json.loads(res.artifacts["report.json"].read_text())["params"]["after"] == rep["params"]["after"]


def test_verify_catches_a_wrong_surgery(mixnet_onnx: Path) -> None:
    """The check is not vacuous: removing other channels than the masked ones is caught."""
    verify_catches_a_wrong_cut(mixnet_onnx, min_size=8, k=2)


def test_local_scope_same_ratio_per_group(mixnet_onnx: Path, tmp_path: Path) -> None:
    res = api.prune(mixnet_onnx, {"measure": False, "target": {"channels": 0.5}, "scope": "local", "max_group_ratio": 0.9,
                                       "round_to": 1}, tmp_path)
    pruned = [g for g in res.report["groups"] if g["candidate"]]
    ratios = {round(1 - g["kept"] / g["total"], 2) for g in pruned}
    assert ratios == {0.5}


def test_round_to_and_ignore(mixnet_onnx: Path, tmp_path: Path) -> None:
    res = api.prune(mixnet_onnx, {"measure": False, "target": {"channels": 0.4}, "round_to": 4, "ignore": ["c3.*"]}, tmp_path)
    for g in res.report["groups"]:
        if g["kept"] < g["total"]:
            assert g["kept"] % 4 == 0
    c3 = [g for g in res.report["groups"] if g["name"] == "c3.weight"]
    assert c3 and c3[0]["kept"] == c3[0]["total"] and not c3[0]["candidate"]


def test_unreachable_target_says_what_is_reachable(mixnet_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(UnreachableTargetError) as e:
        api.prune(mixnet_onnx, {"target": {"params": 0.99}, "max_group_ratio": 0.5}, tmp_path)
    assert 0 < e.value.best < 0.99 and "reachable" in str(e.value)
    assert not (tmp_path / "pruned.onnx").exists()


def test_bad_models(tmp_path: Path, mixnet_onnx: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        graph.load(tmp_path / "nope.onnx")
    (tmp_path / "text.onnx").write_text("hello, not a model")
    with pytest.raises(ModelLoadError, match="not a valid ONNX"):
        graph.load(tmp_path / "text.onnx")
    data = mixnet_onnx.read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError):
        graph.load(tmp_path / "trunc.onnx")
    with pytest.raises(SpecError, match="unknown input"):
        graph.load(mixnet_onnx, {"pixels": [1, 3, 16, 16]})


def test_external_data_cannot_leave_the_model_folder(tmp_path: Path, mixnet_onnx: Path) -> None:
    m = onnx.load(mixnet_onnx)
    t = max(m.graph.initializer, key=lambda t: len(t.raw_data) or 0)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 64)
    sub = tmp_path / "model"
    sub.mkdir()
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    entry = t.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    onnx.save(m, str(sub / "evil.onnx"))
    with pytest.raises(ModelLoadError, match="leaves the model's folder"):
        graph.load(sub / "evil.onnx")
    entry.value = str(secret)
    onnx.save(m, str(sub / "evil2.onnx"))
    with pytest.raises(ModelLoadError, match="leaves the model's folder"):
        graph.load(sub / "evil2.onnx")


def test_external_data_inside_folder_loads(tmp_path: Path, mixnet_onnx: Path) -> None:
    m = onnx.load(mixnet_onnx)
    onnx.save(m, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    res = api.prune(tmp_path / "ext.onnx", {"measure": False, "target": {"flops": 0.3}}, tmp_path / "out")
    assert res.report["verify"]["passed"]


def test_dynamic_dims_need_shapes(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = onnx.numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    m = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w]),
                          opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(tmp_path / "dyn.onnx"))
    with pytest.raises(SpecError, match="dynamic shape"):
        graph.load(tmp_path / "dyn.onnx")
    g = graph.load(tmp_path / "dyn.onnx", {"x": [2, 5, 8]})
    assert g.shape("y") == (2, 5, 4)
