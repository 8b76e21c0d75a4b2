"""Broken and unusual graphs: only ``PruneError``s escape, as sentences without exception names,
and what can still be pruned is pruned.

Each case mutates a small exported net (a CNN with a residual and a grouped conv, and an
attention block) the way real exports differ from the ones seen in development."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pruning_core import api
from pruning_core.errors import PruneError

EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b|Traceback")
SPEC = {"target": {"flops": 0.2}, "measure": False}


def _first(m: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(n for n in m.graph.node if n.op_type == op)


def drop_value_info(m: onnx.ModelProto) -> None:
    del m.graph.value_info[:]


def symbolic_intermediates(m: onnx.ModelProto) -> None:
    """Declared intermediate shapes with names for dims (as some exporters write them)."""
    del m.graph.value_info[:]
    for n in m.graph.node[:6]:
        vi = helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, [f"d{i}" for i in range(4)])
        m.graph.value_info.append(vi)


def contrib_op(m: onnx.ModelProto) -> None:
    """An onnxruntime contrib op on a channel path: ONNX has no schema, onnxruntime runs it."""
    relu = _first(m, "Relu")
    relu.op_type, relu.domain = "Gelu", "com.microsoft"
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def custom_domain(m: onnx.ModelProto) -> None:
    relu = _first(m, "Relu")
    relu.op_type, relu.domain = "Swish", "example.custom"
    m.opset_import.append(helper.make_opsetid("example.custom", 1))


def unknown_op(m: onnx.ModelProto) -> None:
    _first(m, "Relu").op_type = "Rectify"


def truncated_initializer(m: onnx.ModelProto) -> None:
    t = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    t.raw_data = t.raw_data[: len(t.raw_data) // 2]


def cycle(m: onnx.ModelProto) -> None:
    """The first node reads the output of a later one."""
    first, later = m.graph.node[0], m.graph.node[3]
    first.input[0] = later.output[0]


def dangling_input(m: onnx.ModelProto) -> None:
    next(n for n in m.graph.node[2:] if n.input).input[0] = "nowhere"


def wrong_weight_shape(m: onnx.ModelProto) -> None:
    """A conv weight whose input channels do not match the tensor it reads."""
    conv = [n for n in m.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")][1]
    t = next(t for t in m.graph.initializer if t.name == conv.input[1])
    arr = onnx.numpy_helper.to_array(t)
    cut = np.ascontiguousarray(arr[:, :-1] if arr.ndim == 4 else arr[:-1])
    t.CopyFrom(onnx.numpy_helper.from_array(cut, t.name))


RUNS = {"drop_value_info": drop_value_info, "symbolic_intermediates": symbolic_intermediates,
        "contrib_op": contrib_op}
FAILS = {"custom_domain": custom_domain, "unknown_op": unknown_op, "truncated_initializer": truncated_initializer,
         "cycle": cycle, "dangling_input": dangling_input, "wrong_weight_shape": wrong_weight_shape}


def _mutated(src: Path, mutate: Callable[[onnx.ModelProto], None], tmp_path: Path) -> Path:
    m = onnx.load(src)
    mutate(m)
    out = tmp_path / "mutated.onnx"
    onnx.save(m, out)
    return out


@pytest.mark.parametrize("net", ["mixnet_onnx", "attn_onnx"])
@pytest.mark.parametrize("name", sorted(RUNS))
def test_mutated_graph_still_prunes(net: str, name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    src = request.getfixturevalue(net)
    if name in ("contrib_op", "custom_domain") and not any(n.op_type == "Relu" for n in onnx.load(src).graph.node):
        pytest.skip("no Relu to replace")  # the attention net has none: nothing to mutate
    r = api.prune(_mutated(src, RUNS[name], tmp_path), SPEC, tmp_path / "out")
    assert r.report["verify"]["passed"]
    assert r.report["macs"]["removed_fraction"] > 0.1


@pytest.mark.parametrize("net", ["mixnet_onnx", "attn_onnx"])
@pytest.mark.parametrize("name", sorted(FAILS))
def test_broken_graph_fails_with_a_sentence(net: str, name: str, request: pytest.FixtureRequest,
                                            tmp_path: Path) -> None:
    src = request.getfixturevalue(net)
    if name in ("contrib_op", "custom_domain", "unknown_op") and \
            not any(n.op_type == "Relu" for n in onnx.load(src).graph.node):
        pytest.skip("no Relu to replace")
    with pytest.raises(PruneError) as e:
        api.prune(_mutated(src, FAILS[name], tmp_path), SPEC, tmp_path / "out")
    msg = str(e.value)
    assert msg and not EXCEPTION_NAME.search(msg), msg
    assert not (tmp_path / "out" / "pruned.onnx").exists()


class _Calib:
    """onnxruntime.quantization's calibration reader: four Gaussian inputs."""

    def __init__(self) -> None:
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.i += 1
        return {"x": np.random.default_rng(self.i).standard_normal((1, 3, 16, 16)).astype(np.float32)} \
            if self.i < 5 else None


# QDQ graphs are pruned through (tests/core/test_qdq.py); integer kernels are refused
@pytest.mark.parametrize("form, op", [("dynamic", "ConvInteger"), ("qoperator", "QLinearConv")])
def test_quantized_graph_is_refused_with_what_to_do(form: str, op: str, mixnet_onnx: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    from onnxruntime import quantization as q

    from client.cli import main
    from pruning_core.errors import UnsupportedOpError

    src = tmp_path / f"{form}.onnx"
    if form == "dynamic":
        q.quantize_dynamic(str(mixnet_onnx), str(src), weight_type=q.QuantType.QInt8)
    else:
        q.quantize_static(str(mixnet_onnx), str(src), _Calib(), quant_format=q.QuantFormat.QOperator)
    with pytest.raises(UnsupportedOpError) as e:
        api.prune(src, SPEC, tmp_path / "out")
    msg = str(e.value)
    assert "quantized with integer kernels" in msg and op in msg and "prune the float model" in msg
    assert "QDQ form" in msg
    assert main(["prune", str(src), "-o", str(tmp_path / "cli.onnx"), "--flops", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "quantized" in err and not EXCEPTION_NAME.search(err)
    assert not (tmp_path / "cli.onnx").exists()
