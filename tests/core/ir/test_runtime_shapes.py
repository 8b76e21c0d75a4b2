"""Shapes only the runtime knows (ir.runtime_shapes): tensors ONNX shape inference leaves
symbolic are measured by one onnxruntime run, the model prunes and verifies, and the saved model
keeps the original's symbolic dims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pruning_core import api
from pruning_core.errors import ModelLoadError, PruneError
from pruning_core.ir import graph


def _net(path: Path, domain: str = "com.microsoft") -> Path:
    """Conv -> Gelu of another domain (no ONNX schema: everything after it has no inferred shape)
    -> Conv -> Relu -> Conv -> pool -> Gemm, and a second output whose length depends on the data
    (NonZero)."""
    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    inits = [w("c1.w", 16, 3, 3, 3), w("c1.b", 16), w("c2.w", 32, 16, 3, 3), w("c2.b", 32),
             w("c3.w", 32, 32, 1, 1), w("c3.b", 32), w("fc.w", 10, 32), w("fc.b", 10),
             numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["a"], pads=[1] * 4),
             helper.make_node("Gelu", ["a"], ["b"], domain=domain),
             helper.make_node("Conv", ["b", "c2.w", "c2.b"], ["c"], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["d"]),
             helper.make_node("Conv", ["d", "c3.w", "c3.b"], ["e"]),
             helper.make_node("Relu", ["e"], ["f"]),
             helper.make_node("GlobalAveragePool", ["f"], ["p"]),
             helper.make_node("Flatten", ["p"], ["q"]),
             helper.make_node("Gemm", ["q", "fc.w", "fc.b"], ["y"], transB=1),
             helper.make_node("Greater", ["x", "zero"], ["pos"]),
             helper.make_node("NonZero", ["pos"], ["where"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10]),
                           helper.make_tensor_value_info("where", TensorProto.INT64, [4, "n"])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_unresolved_shapes_are_measured_not_declared(tmp_path: Path) -> None:
    g = graph.load(_net(tmp_path / "m.onnx"))
    assert {"b", "c", "y", "where"} <= g.runtime_shaped
    assert g.shape("c") == (1, 32, 16, 16)
    assert g.shape("where")[0] == 4
    # measured sizes are never written into the model: only what inference itself knows
    declared = {vi.name for vi in g.model.graph.value_info}
    assert not declared & g.runtime_shaped


def test_model_with_runtime_only_shapes_prunes_and_keeps_its_signature(tmp_path: Path) -> None:
    src = _net(tmp_path / "m.onnx")
    r = api.prune(src, {"target": {"flops": 0.3}, "measure": False}, tmp_path / "out")
    assert r.report["verify"]["passed"]
    assert r.report["macs"]["removed_fraction"] == pytest.approx(0.3, abs=0.01)
    out = onnx.load(tmp_path / "out" / "pruned.onnx")
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in out.graph.output}
    assert dims == {"y": ["batch", 10], "where": [4, "n"]}
    # runs at another batch, and equals the original where no channel was removed from its path
    x = np.random.default_rng(1).standard_normal((7, 3, 16, 16)).astype(np.float32)
    new = ort.InferenceSession(str(tmp_path / "out" / "pruned.onnx")).run(None, {"x": x})
    old = ort.InferenceSession(str(src)).run(None, {"x": x})
    assert new[0].shape == (7, 10)
    np.testing.assert_array_equal(new[1], old[1])


def test_a_model_that_cannot_run_fails_with_a_sentence(tmp_path: Path) -> None:
    src = _net(tmp_path / "m.onnx", domain="example.custom")
    with pytest.raises(ModelLoadError) as e:
        api.prune(src, {"target": {"flops": 0.3}, "measure": False}, tmp_path / "out")
    msg = str(e.value)
    assert isinstance(e.value, PruneError)
    assert "onnxruntime cannot run the model" in msg and "example.custom" in msg and "Gelu" in msg
    assert "KeyError" not in msg and not msg.startswith("'")
    assert not (tmp_path / "out" / "pruned.onnx").exists()


def test_paddle_style_unknown_dims_stay_unknown_and_independent(tmp_path: Path) -> None:
    """Paddle exports declare unknown dims as -1 and name both height and width "?": the pruned
    model declares each of them unknown on its own and runs at other sizes."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32), n) for n, s in
             [("c1.w", (16, 3, 3, 3)), ("c2.w", (16, 16, 3, 3)), ("fc.w", (2, 16)), ("fc.b", (2,))]]
    nodes = [helper.make_node("Conv", ["x", "c1.w"], ["a"], pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "c2.w"], ["c"], pads=[1] * 4),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["q"]),
             helper.make_node("Gemm", ["q", "fc.w", "fc.b"], ["y"], transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 2])
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "m.onnx")
    r = api.prune(tmp_path / "m.onnx", {"target": {"channels": 0.5}, "input_shapes": {"x": [1, 3, 48, 192]},
                                        "measure": False}, tmp_path / "out")
    assert r.report["verify"]["passed"]
    out = onnx.load(tmp_path / "out" / "pruned.onnx")
    xd = [d.dim_param or d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim]
    yd = [d.dim_param or d.dim_value for d in out.graph.output[0].type.tensor_type.shape.dim]
    assert xd[1] == 3 and all(isinstance(d, str) and d for d in (xd[0], xd[2], xd[3], yd[0]))
    assert len({xd[0], xd[2], xd[3]}) == 3 and yd[0] != xd[2]
    sess = ort.InferenceSession(str(tmp_path / "out" / "pruned.onnx"))
    assert sess.run(None, {"x": np.ones((3, 3, 48, 100), np.float32)})[0].shape == (3, 2)


def test_if_branches_reading_outer_tensors_keep_them(tmp_path: Path) -> None:
    """An If whose branches read an outer tensor (no declared input): the tensor's producer stays
    alive and its channels stay (the branch is not rewritten); the rest of the model prunes."""
    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    then_g = helper.make_graph([helper.make_node("Relu", ["t"], ["u_then"])], "then", [],
                               [helper.make_tensor_value_info("u_then", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Sigmoid", ["t"], ["u_else"])], "else", [],
                               [helper.make_tensor_value_info("u_else", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Conv", ["x", "c1.w"], ["a"], pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "c2.w"], ["t"], pads=[1] * 4),
             helper.make_node("If", ["flag"], ["u"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Conv", ["u", "c3.w"], ["v"]),
             helper.make_node("GlobalAveragePool", ["v"], ["p"]),
             helper.make_node("Flatten", ["p"], ["q"]),
             helper.make_node("Gemm", ["q", "fc.w", "fc.b"], ["y"], transB=1)]
    inits = [w("c1.w", 16, 3, 3, 3), w("c2.w", 32, 16, 3, 3), w("c3.w", 32, 32, 1, 1), w("fc.w", 10, 32), w("fc.b", 10)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16]),
                                       helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "m.onnx")
    an = graph.load(tmp_path / "m.onnx")
    assert "c2.w" in an.inits and any(n.op_type == "Conv" and n.output[0] == "t" for n in an.model.graph.node)
    r = api.prune(tmp_path / "m.onnx", {"target": {"channels": 0.2}, "measure": False}, tmp_path / "out")
    assert r.report["verify"]["passed"]
    out = onnx.load(tmp_path / "out" / "pruned.onnx")
    dims = {t.name: list(t.dims) for t in out.graph.initializer}
    assert dims["c2.w"][0] == 32 and dims["c1.w"][0] < 16  # t is read in the branches: kept whole
    sess = ort.InferenceSession(str(tmp_path / "out" / "pruned.onnx"))
    for flag in (True, False):
        y = sess.run(None, {"x": np.ones((2, 3, 16, 16), np.float32), "flag": np.array(flag)})[0]
        assert y.shape == (2, 10)
