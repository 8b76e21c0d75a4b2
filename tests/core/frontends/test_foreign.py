"""Graphs not made by torch: hand-written ONNX in the layouts other frameworks emit (NHWC with
Transposes, Gemm with transB, a weight on the left of MatMul, Constant nodes), and zip uploads."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pruning_core import api
from pruning_core.errors import ModelLoadError


def _tf_style_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x_nchw", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Transpose", ["r1"], ["r1_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Mul", ["r1_nhwc", "scale"], ["s1"]),          # per-channel, last axis
        helper.make_node("Constant", [], ["shift"], value=init("shift_v", 12)),
        helper.make_node("Add", ["s1", "shift"], ["a1"]),
        helper.make_node("Transpose", ["a1"], ["a1_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["a1_nchw", "w2"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Reshape", ["r2", "flat_shape"], ["r2f"]),       # [1, 16, 64]
        helper.make_node("MatMul", ["wl", "r2f"], ["m1"]),                # [6,16] @ [1,16,64]
        helper.make_node("Tanh", ["m1"], ["t1"]),
        helper.make_node("ReduceMean", ["t1", "axes2"], ["p1"], keepdims=0),   # [1, 6]
        helper.make_node("Gemm", ["p1", "wg", "bg"], ["y"], transB=1),
    ]
    inits = [init("w1", 12, 3, 3, 3), init("b1", 12), init("scale", 12), init("w2", 16, 12, 1, 1),
             numpy_helper.from_array(np.array([1, 16, 64], np.int64), "flat_shape"),
             init("wl", 6, 16), numpy_helper.from_array(np.array([2], np.int64), "axes2"),
             init("wg", 5, 6), init("bg", 5)]
    graph = helper.make_graph(nodes, "tf_style", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_tf_style_graph_prunes_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "tf.onnx"
    onnx.save(_tf_style_model(), str(path))
    summary = api.analyze(path)
    names = {g["name"] for g in summary["groups"] if g["prunable"]}
    assert {"w1", "w2", "wl"} <= names  # NHWC conv channels, conv2 channels, the left-weight rows
    res = api.prune(path, {"measure": False, "target": {"flops": 0.4}}, tmp_path / "out")
    assert res.report["verify"]["passed"]
    kept = {g["name"]: (g["kept"], g["total"]) for g in res.report["groups"]}
    assert kept["w1"][0] < 12  # the NHWC-scaled channels were cut, scale / shift sliced with them
    pruned = onnx.load(res.artifacts["pruned.onnx"])
    sliced = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert sliced["scale"] == (kept["w1"][0],)
    x = {"x": np.random.default_rng(1).standard_normal((1, 8, 8, 3)).astype(np.float32)}
    out = ort.InferenceSession(str(res.artifacts["pruned.onnx"])).run(None, x)[0]
    assert out.shape == (1, 5)


def test_zip_upload_with_external_data(tmp_path: Path) -> None:
    m = _tf_style_model()
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(m, str(src / "model.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    z = tmp_path / "model.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(src / "model.onnx", "model/model.onnx")
        zf.write(src / "weights.bin", "model/weights.bin")
    res = api.prune(z, {"measure": False, "target": {"flops": 0.3}}, tmp_path / "out")
    assert res.report["verify"]["passed"] and res.report["source"]["kind"] == "onnx"


@pytest.mark.parametrize("member", ["../evil.onnx", "/abs/evil.onnx", "a/../../evil.onnx"])
def test_zip_with_unsafe_member_is_refused(tmp_path: Path, member: str) -> None:
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(member, b"x")
    with pytest.raises(ModelLoadError, match="unsafe path"):
        api.analyze(z)
    assert not (tmp_path / "evil.onnx").exists()


def test_zip_without_a_model_is_refused(tmp_path: Path) -> None:
    z = tmp_path / "empty.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", b"no model here")
    with pytest.raises(ModelLoadError, match="exactly one .onnx"):
        api.analyze(z)


def test_op_without_rule_blocks_only_its_group(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    # conv a -> LpNormalization over channels (mixes them: no exact rule) -> conv b
    # conv c -> Relu -> conv d: prunable as usual
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"]),
        helper.make_node("LpNormalization", ["a"], ["an"], axis=1),
        helper.make_node("Conv", ["an", "wb"], ["b"]),
        helper.make_node("Conv", ["x", "wc"], ["c"]),
        helper.make_node("Relu", ["c"], ["cr"]),
        helper.make_node("Conv", ["cr", "wd"], ["d"]),
        helper.make_node("Add", ["b", "d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [init("wa", 8, 3, 1, 1), init("wb", 4, 8, 1, 1), init("wc", 8, 3, 1, 1), init("wd", 4, 8, 1, 1)])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    groups = {g["name"]: g for g in api.analyze(path)["groups"]}
    assert not groups["wa"]["prunable"]
    assert "LpNormalization" in groups["wa"]["reasons"][0] and "mixes channels" in groups["wa"]["reasons"][0]
    assert groups["wc"]["prunable"]
    res = api.prune(path, {"measure": False, "target": {"channels": 0.3}}, tmp_path / "out")
    kept = {g["name"]: g["kept"] for g in res.report["groups"]}
    assert kept["wa"] == 8 and kept["wc"] < 8 and res.report["verify"]["passed"]
