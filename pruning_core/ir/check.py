"""What a model must be before anything reads it: a sentence about the user's file instead of an
exception from deep inside the analysis, surgery or onnxruntime.

- every tensor a node reads is defined (graph input, initializer, an earlier node's output);
  nodes out of order but acyclic are sorted (onnxruntime accepts them; the analysis walks in
  order), a cycle is refused;
- every op of the default ONNX domains exists in ONNX;
- every initializer holds as many bytes as its shape and type need;
- a model that ONNX shape inference finds inconsistent (a weight that does not fit the tensor it
  reads) is refused when onnxruntime cannot run it either; when it can, the runtime's word wins
  (some exporters write graphs strict inference rejects)."""

from __future__ import annotations

from collections import deque

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper

from pruning_core.errors import ModelLoadError, UnsupportedOpError, describe
from pruning_core.ir import runtime_shapes, weights

STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
# Integer kernels of quantized graphs (ONNX and onnxruntime's contrib domain): dynamic and
# QOperator forms. QDQ graphs (QuantizeLinear / DequantizeLinear around float ops) are pruned
# through (analysis.rules.quantize); these have no channel rules.
QUANTIZED = {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
             "QLinearConv", "QLinearMatMul", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
             "QGemm", "QAttention", "QOrderedMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat",
             "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool",
             "QLinearSoftmax", "QLinearWhere", "QLinearReduceMean", "MatMulNBits", "DequantizeBFP"}


def _node(n: onnx.NodeProto) -> str:
    return f"{n.op_type} node {n.name!r}" if n.name else f"a {n.op_type} node"


def structure(m: ModelProto) -> None:
    """Defined inputs, no cycle (nodes sorted in place when out of order), known standard ops,
    initializer sizes. Raises ``ModelLoadError``."""
    g = m.graph
    defined = {i.name for i in g.input} | {t.name for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output if o}
    for n in g.node:
        for name in n.input:
            if name and name not in defined and name not in producer:
                raise ModelLoadError(f"{_node(n)} reads tensor {name!r}, which no input, initializer or "
                                     "node of the model defines")
    _sort(m, defined)
    for n in g.node:
        if n.domain in STANDARD_DOMAINS and not onnx.defs.has(n.op_type, n.domain):
            raise ModelLoadError(f"{_node(n)} uses op {n.op_type!r}, which ONNX does not define"
                                 + (f" in domain {n.domain!r}" if n.domain else ""))
    for t in g.initializer:
        _check_size(t)


def _sort(m: ModelProto, defined: set[str]) -> None:
    """Topological order (Kahn, stable: nodes already in order stay where they are); what a
    subgraph reads from outside counts as an input of its node."""
    nodes = list(m.graph.node)
    index = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    need = [{index[x] for x in [*n.input, *implicit_inputs(n)] if x and x not in defined and x in index}
            for n in nodes]
    if all(all(j < i for j in need[i]) for i in range(len(nodes))):
        return
    users: dict[int, list[int]] = {}
    for i, deps in enumerate(need):
        for j in deps:
            users.setdefault(j, []).append(i)
    left = [len(d) for d in need]
    ready = deque(i for i in range(len(nodes)) if not left[i])
    order = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for u in users.get(i, []):
            left[u] -= 1
            if not left[u]:
                ready.append(u)
    if len(order) < len(nodes):
        stuck = nodes[next(i for i in range(len(nodes)) if left[i])]
        raise ModelLoadError(f"the graph has a cycle: {_node(stuck)} depends on its own output")
    del m.graph.node[:]
    m.graph.node.extend(nodes[i] for i in order)


def _check_size(t: TensorProto) -> None:
    # stubs and external data are checked by their reader, typed fields by protobuf
    if t.data_location == TensorProto.EXTERNAL or not t.raw_data or t.data_type == TensorProto.STRING:
        return
    bits = {TensorProto.INT4: 4, TensorProto.UINT4: 4}.get(t.data_type)
    try:
        bits = bits or 8 * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return
    need = (int(np.prod(t.dims, dtype=np.int64)) * bits + 7) // 8
    if len(t.raw_data) != need:
        raise ModelLoadError(f"initializer {t.name!r} holds {len(t.raw_data)} bytes but its shape "
                             f"{list(t.dims)} needs {need}: the file is truncated or corrupt")


def consistent(m: ModelProto, arrays: dict[str, np.ndarray]) -> None:
    """Strict shape inference on the skeleton; when it fails, the model must at least run on
    onnxruntime at its fixed input shapes, or it is refused with both reasons."""
    try:
        onnx.shape_inference.infer_shapes(weights.as_inputs(m, weights.INLINE_MAX), check_type=False,
                                          strict_mode=True, data_prop=True)
        return
    except Exception as e:
        why = describe(e).replace("Inference error(s): ", "")[:300]
    feeds = runtime_shapes.input_feeds(m)
    if feeds is None:
        return  # inputs without fixed shapes: nothing to run it on
    try:
        runtime_shapes.run_once(m, arrays, feeds)
    except Exception as e:
        raise ModelLoadError(f"the model is inconsistent: ONNX shape inference fails on it ({why}) and "
                             f"onnxruntime cannot run it ({describe(e)[:300]})") from None


def refuse_quantized(m: ModelProto) -> None:
    """A quantized graph is refused (``UnsupportedOpError``) with a sentence that names
    quantization and the ops, and says what to do instead."""
    ops: dict[str, str] = {}
    for n in m.graph.node:
        if n.op_type in QUANTIZED and n.op_type not in ops:
            ops[n.op_type] = n.name
    if ops:
        shown = ", ".join(f"{op} (node {name!r})" for op, name in list(ops.items())[:4])
        raise UnsupportedOpError(f"the model is quantized with integer kernels ({shown}{', ...' if len(ops) > 4 else ''}); "
                                 "pruning through them is not supported: prune the float model (or its QDQ form, "
                                 "QuantizeLinear / DequantizeLinear around float ops), then quantize the result")


def implicit_inputs(node: onnx.NodeProto) -> list[str]:
    """Names of the enclosing graph that ``node``'s subgraphs (If branches, Loop / Scan bodies)
    read without declaring them: real inputs of the node for ordering, liveness and coupling."""
    out: list[str] = []
    for a in node.attribute:
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            inner = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for n in sub.node:
                for name in [*n.input, *implicit_inputs(n)]:
                    if name and name not in inner and name not in out:
                        out.append(name)
                inner.update(o for o in n.output if o)
    return out
