"""Self-check of every result: the pruned model must compute what the original computes with the
removed channels zeroed at every consuming input (0/1 Mul inserted before each consumer).

Holds for any criterion and architecture on exact groups: max |pruned - masked| <=
tolerance * max(1, max |output|), ``TOL`` for float32 graphs. A graph that computes in float16 or
bfloat16 rounds every sum it changes the length of (a narrower MatMul accumulates in another
order): its tolerance is ``ULPS`` units of its precision (float16: 8 x 2^-10), so fp16 / bf16
models can be pruned and a wrong cut (errors of the output's own size) is still caught.
Approximate groups (normalization statistics change) are measured separately. A recurrent op's
hidden units have no tensor to mask: the masked original zeroes their gate rows instead
(``Analysis.zeroed``), which keeps them at 0 exactly as removal does."""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from pruning_core.analysis.groups import Analysis
from pruning_core.ir import weights
from pruning_core.ir.weights import LightModel
from pruning_core.runtime import metrics

TOL = 1e-4
ULPS = 8
EPS = {TensorProto.FLOAT16: 2.0 ** -10, TensorProto.BFLOAT16: 2.0 ** -7, TensorProto.FLOAT: 2.0 ** -23,
       TensorProto.DOUBLE: 2.0 ** -52}
NAMES = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16", TensorProto.FLOAT: "float32",
         TensorProto.DOUBLE: "float64"}


def precision(an: Analysis) -> int:
    """The coarsest float type the graph computes in: its weights' and outputs' (float32 if none)."""
    g = an.graph
    types = {g.dtypes.get(n) for n in g.outputs} | {g.dtypes.get(n) for n in g.original_inits}
    found = [t for t in types if t in EPS]
    return max(found, key=lambda t: EPS[t]) if found else TensorProto.FLOAT


def tolerance(an: Analysis) -> float:
    return _tolerance(precision(an))


def _tolerance(dtype: int) -> float:
    return max(TOL, ULPS * EPS[dtype])


def masked_model(an: Analysis, removed: np.ndarray) -> LightModel:
    m = ModelProto()
    m.CopyFrom(an.graph.model)  # light: the weights stay the original's arrays
    wanted: dict[str, list[tuple[int, str]]] = {}
    for node_name, idx, tensor in an.consumer_inputs:
        wanted.setdefault(node_name, []).append((idx, tensor))
    nodes = []
    masks_made: dict[str, str] = {}
    for node in m.graph.node:
        for idx, tensor in wanted.get(node.name, []):
            mask = an.mask(tensor, removed)
            if mask is None:
                continue
            if tensor not in masks_made:
                mname = f"{tensor}__keep_mask"
                dtype = helper.tensor_dtype_to_np_dtype(an.graph.dtypes.get(tensor, 1))
                m.graph.initializer.append(numpy_helper.from_array(mask.astype(dtype), mname))
                out = f"{tensor}__masked"
                nodes.append(helper.make_node("Mul", [tensor, mname], [out], name=f"{tensor}__mask"))
                masks_made[tensor] = out
            node.input[idx] = masks_made[tensor]
        nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.value_info[:]
    return LightModel(m, _zero_gate_rows(an, removed, m))


def _zero_gate_rows(an: Analysis, removed: np.ndarray, m: ModelProto) -> dict[str, np.ndarray]:
    """The weights with the removed positions of ``an.zeroed`` (recurrent gate rows,
    analysis.rules.recurrent) set to 0: the original's arrays where nothing changes."""
    zeroed: dict[str, np.ndarray] = {}
    for init, axis in an.zeroed:
        keep = an.kept_positions(init, axis, removed)
        arr = zeroed.get(init, an.graph.inits[init])
        if len(keep) == arr.shape[axis]:
            continue
        mask = np.zeros(arr.shape[axis], dtype=arr.dtype)
        mask[keep] = 1
        zeroed[init] = arr * mask.reshape([-1 if a == axis else 1 for a in range(arr.ndim)])
    for t in m.graph.initializer:  # a small weight lives in the proto itself, not in the arrays
        if t.name in zeroed and not weights.is_stub(t):
            t.CopyFrom(numpy_helper.from_array(zeroed[t.name], t.name))
    return {**an.graph.inits, **zeroed} if zeroed else an.graph.inits


def verify(an: Analysis, removed: np.ndarray, pruned, inputs: dict[str, np.ndarray]) -> dict:
    """Compare ``pruned`` (LightModel, ModelProto, path or session) with the masked original on ``inputs``."""
    masked = masked_model(an, removed)
    ref = metrics.run(masked, inputs)
    del masked
    got = metrics.run(pruned, inputs)
    scale = max(1.0, max(float(np.abs(r).max()) if r.size else 0.0 for r in ref))
    err = max(float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max()) if a.size else 0.0
              for a, b in zip(ref, got, strict=True))
    shapes_ok = all(a.shape == b.shape for a, b in zip(ref, got, strict=True))
    dtype = precision(an)
    tol = _tolerance(dtype) * scale
    return {"max_error": err, "output_scale": scale, "tolerance": tol, "precision": NAMES[dtype],
            "passed": bool(shapes_ok and err <= tol), "masked_consumers": len(an.consumer_inputs)}
