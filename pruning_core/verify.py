"""Self-check of every result: the pruned model must compute what the original computes with the
removed channels zeroed at every consuming input (0/1 Mul inserted before each consumer).

Holds for any criterion and architecture on exact groups: max |pruned - masked| <=
TOL * max(1, max |output|). Approximate groups (normalization statistics change) are measured
separately."""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from pruning_core.analysis.groups import Analysis
from pruning_core.ir.weights import LightModel
from pruning_core.runtime import metrics

TOL = 1e-4


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
    return LightModel(m, an.graph.inits)


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
    return {"max_error": err, "output_scale": scale, "tolerance": TOL * scale,
            "passed": bool(shapes_ok and err <= TOL * scale), "masked_consumers": len(an.consumer_inputs)}
