"""float16 graphs (#17 item 1): pruned, verified with a tolerance of their own precision, saved in
their own dtype; a wrong cut is still caught."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from pruning_core import api, verify
from tests.core.nets import verify_catches_a_wrong_cut


def _mlp16(path: Path) -> Path:
    """Four residual MLP blocks in float16 (256 -> 1024 -> 256): a narrower hidden layer sums in
    another order, so the pruned model differs from the masked one by float16 rounding."""
    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float16), name)

    nodes, inits, x = [], [], "x"
    for i in range(4):
        inits += [w(f"up{i}", 256, 1024), w(f"dn{i}", 1024, 256)]
        nodes += [helper.make_node("MatMul", [x, f"up{i}"], [f"u{i}"]), helper.make_node("Relu", [f"u{i}"], [f"r{i}"]),
                  helper.make_node("MatMul", [f"r{i}", f"dn{i}"], [f"d{i}"]),
                  helper.make_node("Add", [x, f"d{i}"], [f"x{i}"])]
        x = f"x{i}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 16, 256])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT16, ["batch", 16, 256])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_float16_model_prunes_and_stays_float16(tmp_path: Path) -> None:
    src = _mlp16(tmp_path / "m.onnx")
    r = api.prune(src, {"target": {"flops": 0.3}, "criterion": "random", "measure": False}, tmp_path / "out")
    v = r.report["verify"]
    assert v["passed"] and v["precision"] == "float16" and v["max_error"] <= v["tolerance"]
    out = onnx.load(tmp_path / "out" / "pruned.onnx")
    assert {t.data_type for t in out.graph.initializer} == {TensorProto.FLOAT16}
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    y = ort.InferenceSession(str(tmp_path / "out" / "pruned.onnx")).run(
        None, {"x": np.ones((3, 16, 256), np.float16)})[0]
    assert y.dtype == np.float16 and y.shape == (3, 16, 256)


def test_float16_tolerance_still_catches_a_wrong_cut(tmp_path: Path) -> None:
    an = verify_catches_a_wrong_cut(_mlp16(tmp_path / "m.onnx"), min_size=64, k=16)
    assert verify.tolerance(an) == verify.ULPS * 2.0 ** -10
