"""Shapes only the runtime knows.

ONNX shape inference leaves some tensors without a static shape even when every input shape is
fixed: ops from other domains, ``If`` / ``Loop`` outputs, lengths that depend on the data (a
recognizer's sequence after ``NonZero``), exporters that write shapes inference cannot follow.
The analysis needs concrete sizes on channel paths, so such tensors are measured: the model runs
once on onnxruntime, at the fixed input shapes, with the unresolved tensors as extra outputs.

A size measured this way holds for these inputs only. It serves the analysis and the checks,
which run at the same shapes; it is never written into the model (``value_info``) and never
folded into a constant (folding is over before this runs), so the saved model keeps whatever the
original declared."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from onnx import ModelProto, ValueInfoProto, helper

from pruning_core.errors import ModelLoadError, describe
from pruning_core.ir import weights

if TYPE_CHECKING:
    from pruning_core.ir.graph import Graph


def unresolved(g: Graph) -> list[str]:
    """Outputs of the main graph's nodes that have no static shape, in graph order."""
    seen: set[str] = set()
    out = []
    for node in g.model.graph.node:
        for name in node.output:
            if name and name not in g.shapes and name not in g.inits and name not in seen:
                seen.add(name)
                out.append(name)
    return out


def input_feeds(m: ModelProto) -> dict[str, np.ndarray] | None:
    """Inputs at the model's fixed input shapes (None when one is not fixed): standard normal
    floats, ones for integers (a valid index of any table with two rows or more), true for
    booleans."""
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    stubs = {t.name for t in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in stubs:
            continue
        tt = vi.type.tensor_type
        if not tt.HasField("shape") or not all(d.HasField("dim_value") for d in tt.shape.dim):
            return None
        shape = tuple(d.dim_value for d in tt.shape.dim)
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if dtype.kind == "f":
            out[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            out[vi.name] = np.ones(shape, dtype=dtype)
        elif dtype.kind == "b":
            out[vi.name] = np.ones(shape, dtype=bool)
        else:
            return None
    return out


def run_once(m: ModelProto, arrays: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
             extra_outputs: list[str] = ()) -> dict[str, np.ndarray]:
    """One onnxruntime run of ``m`` (weights fed in place from ``arrays``, never serialized; no
    graph optimization: a check, not a timing), with ``extra_outputs`` added: {output: value}."""
    import onnxruntime as ort

    sk = weights.as_inputs(m)
    have = {o.name for o in sk.graph.output}
    # an output with a name only: onnxruntime takes its type from the producing node
    sk.graph.output.extend(ValueInfoProto(name=n) for n in extra_outputs if n not in have)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(sk.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {**feeds, **weights.LightModel(m, arrays).feeds()})
    return dict(zip([o.name for o in sess.get_outputs()], out, strict=True))


def resolve(g: Graph) -> None:
    """Measure the shapes static inference left open (``g.shapes`` / ``g.dtypes``; the names go
    to ``g.runtime_shaped``). When there is nothing to run it on, ``g.shape_note`` says why and the
    tensors stay unknown: ``Graph.shape`` then raises a sentence that names one. A model
    onnxruntime cannot run is refused here (``ModelLoadError``)."""
    names = unresolved(g)
    if not names:
        return
    x = input_feeds(g.model)
    if x is None:
        g.shape_note = "an input has no fixed shape or a type that cannot be generated"
        return
    try:
        got = run_once(g.model, g.inits, x, names)
    except Exception as e:  # everything after analysis runs the model on onnxruntime: say it now
        raise ModelLoadError(f"onnxruntime cannot run the model, which it must to measure the shapes ONNX "
                             f"shape inference leaves open (e.g. {names[0]!r}): {describe(e)[:300]}") from None
    for n in names:
        a = got.get(n)
        if isinstance(a, np.ndarray):
            g.shapes[n] = tuple(int(d) for d in a.shape)
            g.dtypes[n] = helper.np_dtype_to_tensor_dtype(a.dtype)
            g.runtime_shaped.add(n)
