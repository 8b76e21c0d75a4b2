"""Weights beside the proto: the wire-format reader and the streaming writer against onnx's own
load / save, stubs never leaking, external data beyond protobuf's limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pruning_core.errors import ModelLoadError
from pruning_core.ir import graph as graph_mod
from pruning_core.ir import weights
from pruning_core.runtime import metrics


def _model() -> onnx.ModelProto:
    """MatMul chain with initializers of several types and sizes, plus one Constant node."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 48)).astype(np.float32)  # large: becomes a stub
    w2 = rng.standard_normal((48, 40)).astype(np.float16)  # large float16
    b = rng.standard_normal(40).astype(np.float32)  # small: stays inline
    idx = np.arange(2000, dtype=np.int64) % 40  # large int64
    bf = helper.make_tensor("bf", TensorProto.BFLOAT16, [1100], np.zeros(1100, np.float32).tolist())  # no numpy dtype
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Cast", ["h"], ["h16"], to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["h16", "w2"], ["y16"]),
        helper.make_node("Cast", ["y16"], ["y32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["y32", "b"], ["y"]),
        helper.make_node("Gather", ["y", "idx"], ["z"], axis=1),
        helper.make_node("Cast", ["bf"], ["bf32"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["bf32"], ["s"], keepdims=0),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 2000]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(idx, "idx"), bf])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], producer_name="test")
    m.ir_version = 8
    return m


def _inits(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)), k


def test_read_matches_onnx_load(tmp_path: Path) -> None:
    m = _model()
    onnx.save(m, tmp_path / "m.onnx")
    light, arrays = weights.read(tmp_path / "m.onnx")
    stubs = {t.name for t in light.graph.initializer if weights.is_stub(t)}
    assert stubs == {"w1", "w2", "idx"}  # small and bfloat16 tensors stay in the proto
    assert all(not arrays[n].flags.writeable and arrays[n].flags.aligned for n in stubs)
    assert [t.name for t in light.graph.initializer] == [t.name for t in m.graph.initializer]  # order kept
    full = weights.materialize(light, arrays)
    assert full == m  # byte-for-byte the same message
    assert light.producer_name == "test" and len(light.graph.node) == len(m.graph.node)


def test_save_round_trips_through_onnx(tmp_path: Path) -> None:
    m = _model()
    onnx.save(m, tmp_path / "m.onnx")
    light, arrays = weights.read(tmp_path / "m.onnx")
    weights.save(light, arrays, tmp_path / "out.onnx")
    back = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(str(tmp_path / "out.onnx"), full_check=True)
    _same(_inits(back), _inits(m))
    assert list(back.graph.node) == list(m.graph.node)
    assert not list((tmp_path).glob("*.part"))


def test_session_on_light_model_feeds_the_arrays(tmp_path: Path) -> None:
    m = _model()
    onnx.save(m, tmp_path / "m.onnx")
    light = weights.LightModel(*weights.read(tmp_path / "m.onnx"))
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    sess = metrics.session(light)
    assert [i.name for i in sess.get_inputs()] == ["x"]
    for a, b in zip(sess.run(None, {"x": x}), want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_stub_cannot_reach_onnxruntime_unnoticed(tmp_path: Path) -> None:
    onnx.save(_model(), tmp_path / "m.onnx")
    light, _ = weights.read(tmp_path / "m.onnx")
    with pytest.raises(Exception, match="spa:memory|External data|external"):
        ort.InferenceSession(light.SerializeToString(), providers=["CPUExecutionProvider"])


def test_beyond_the_protobuf_limit_data_goes_to_an_aligned_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(weights, "PROTO_LIMIT", 1000)
    m = _model()
    onnx.save(m, tmp_path / "m.onnx")
    light, arrays = weights.read(tmp_path / "m.onnx")
    weights.save(light, arrays, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").is_file()
    proto = onnx.load(tmp_path / "big.onnx", load_external_data=False)
    offsets = [int(e.value) for t in proto.graph.initializer for e in t.external_data if e.key == "offset"]
    assert len(offsets) == 3 and all(o % 4096 == 0 for o in offsets)
    onnx.checker.check_model(str(tmp_path / "big.onnx"), full_check=True)
    _same(_inits(onnx.load(tmp_path / "big.onnx")), _inits(m))
    # and our own reader takes it back, data read from the file beside it
    light2, arrays2 = weights.read(tmp_path / "big.onnx")
    assert weights.materialize(light2, arrays2).graph.initializer == m.graph.initializer


def test_writer_refuses_an_array_that_does_not_match_its_declaration(tmp_path: Path) -> None:
    onnx.save(_model(), tmp_path / "m.onnx")
    light, arrays = weights.read(tmp_path / "m.onnx")
    arrays["w1"] = arrays["w1"][:, :10]
    with pytest.raises(ValueError, match="w1"):
        weights.save(light, arrays, tmp_path / "out.onnx")
    assert not list(tmp_path.glob("out.onnx*"))


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_file_is_a_load_error(tmp_path: Path, cut: float) -> None:
    data = _model().SerializeToString()
    (tmp_path / "t.onnx").write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ModelLoadError, match="not a valid ONNX model|truncated"):
        graph_mod.load(tmp_path / "t.onnx")


def test_graph_full_model_is_the_normalized_model_with_weights(tmp_path: Path) -> None:
    m = _model()
    onnx.save(m, tmp_path / "m.onnx")
    g = graph_mod.load(tmp_path / "m.onnx")
    assert any(weights.is_stub(t) for t in g.model.graph.initializer)
    full = g.full_model()
    assert not any(weights.is_stub(t) for t in full.graph.initializer)
    onnx.checker.check_model(full, full_check=True)
    kept = _inits(full)  # folding may drop constants (bf -> Cast -> ReduceSum folds)
    _same({k: v for k, v in _inits(m).items() if k in kept}, {k: kept[k] for k in _inits(m) if k in kept})
    assert {"w1", "w2", "idx"} <= kept.keys()


def test_external_data_shorter_than_its_declaration_is_refused_before_allocating(tmp_path: Path) -> None:
    m = _model()
    onnx.save(m, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    proto = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    w1 = next(t for t in proto.graph.initializer if t.name == "w1")
    del w1.dims[:]
    w1.dims.extend([1 << 20, 1 << 20])  # 4 TiB claimed: must not be allocated
    for e in w1.external_data:
        if e.key == "length":
            e.value = str(4 << 40)
    onnx.save(proto, tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match="truncated"):
        weights.read(tmp_path / "m.onnx")
