"""Surgery: remove channels physically. Slice every initializer place, then let each op rule
rewrite its attributes and shape constants (``OpRule.rewrite``); finally re-infer shapes and check
them against the shapes the analysis predicts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import AttributeProto, ModelProto, NodeProto, numpy_helper

from pruning_core.analysis.groups import Analysis
from pruning_core.analysis.rules import RULES
from pruning_core.ir import weights
from pruning_core.ir.graph import attr, skeleton
from pruning_core.ir.weights import LightModel


class SurgeryError(RuntimeError):
    """Surgery produced an inconsistent model: a bug, never the user's fault."""


class SurgeryCtx:
    def __init__(self, an: Analysis, removed: np.ndarray, model: ModelProto,
                 arrays: dict[str, np.ndarray]) -> None:
        self.an, self.removed, self.model, self.arrays = an, removed, model, arrays
        self.g = an.graph
        self._inits = {t.name: t for t in model.graph.initializer}

    def old_shape(self, name: str) -> tuple[int, ...]:
        return self.g.shape(name)

    def new_shape(self, name: str) -> tuple[int, ...]:
        return self.an.shape_after(name, self.removed)

    def kept_positions(self, name: str, axis: int) -> np.ndarray:
        return self.an.kept_positions(name, axis, self.removed)

    def const(self, name: str) -> np.ndarray | None:
        return self.g.inits.get(name) if name else None

    def is_param_like(self, name: str) -> bool:
        return name in self.g.inits or name in self.an.views

    def attr(self, node: NodeProto, name: str, default):
        return attr(node, name, default)

    def set_attr(self, node: NodeProto, new: AttributeProto) -> None:
        for a in node.attribute:
            if a.name == new.name:
                a.CopyFrom(new)
                return
        node.attribute.append(new)

    def drop_attr(self, node: NodeProto, name: str) -> None:
        keep = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(keep)

    def add_const_input(self, node: NodeProto, index: int, value: np.ndarray, name: str) -> None:
        """Give ``node`` a new constant input at ``index`` (optional inputs filled with '')."""
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        while len(node.input) <= index:
            node.input.append("")
        node.input[index] = name

    def set_const_input(self, node: NodeProto, index: int, value: np.ndarray) -> None:
        """Point input ``index`` of ``node`` at a constant holding ``value`` (a private copy when
        the old constant is shared with other nodes)."""
        old = node.input[index]
        value = np.asarray(value, dtype=self.g.inits[old].dtype if old in self.g.inits else np.int64)
        users = self.g.consumers.get(old, [])
        if len(users) <= 1 and old in self._inits:
            self._inits[old].CopyFrom(numpy_helper.from_array(value, old))
            self.arrays.pop(old, None)  # now inline; apply_light re-stubs it if large
            return
        name = f"{old}__{node.name}"
        t = numpy_helper.from_array(value, name)
        self.model.graph.initializer.append(t)
        self._inits[name] = self.model.graph.initializer[-1]
        node.input[index] = name


def apply(an: Analysis, removed: np.ndarray) -> ModelProto:
    """A new model with the channels ``removed[cid]`` cut out (weights inside)."""
    return apply_light(an, removed).full()


def apply_light(an: Analysis, removed: np.ndarray,
                progress: Callable[[float], None] | None = None) -> LightModel:
    """The pruned model as a light proto plus arrays: untouched weights are the original's
    arrays (shared, read-only), sliced ones new arrays; nothing goes through protobuf.
    ``progress(fraction)`` every few dozen sliced initializers (a cancel lands there)."""
    g = an.graph
    m = ModelProto()
    m.CopyFrom(g.model)  # light: stubs only
    removed = np.asarray(removed, dtype=bool)
    arrays = dict(g.inits)
    by_name = {t.name: t for t in m.graph.initializer}
    n_params = max(1, len(an.param_owner))
    for i, (init, owners) in enumerate(an.param_owner.items()):
        if progress is not None and i % 32 == 0:
            progress(0.9 * i / n_params)
        arr = g.inits[init]
        for ax, owner in owners:
            keep = np.nonzero((owner < 0) | ~removed[np.maximum(owner, 0)])[0]
            if len(keep) != arr.shape[ax]:
                arr = np.take(arr, keep, axis=ax)
        if arr.shape != g.inits[init].shape:
            t = by_name[init]
            if weights.is_stub(t):
                arrays[init] = np.ascontiguousarray(arr)
                del t.dims[:]
                t.dims.extend(arr.shape)
            else:
                t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), init))
                arrays[init] = arr
    sx = SurgeryCtx(an, removed, m, arrays)
    for node in m.graph.node:
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is not None and rule.rewrite is not None:
            rule.rewrite(sx, node)
    if progress is not None:
        progress(0.9)  # shape inference and the check below
    weights.strip(m, arrays)
    del m.graph.value_info[:]
    try:  # on a skeleton: the weights are never serialized for inference
        inferred = onnx.shape_inference.infer_shapes(skeleton(m), check_type=True, strict_mode=True,
                                                     data_prop=True)
    except Exception as e:
        raise SurgeryError(f"pruned model fails shape inference: {e}") from None
    m.graph.value_info.extend(inferred.graph.value_info)
    _check_shapes(an, removed, inferred)
    return LightModel(m, arrays)


def _check_shapes(an: Analysis, removed: np.ndarray, m: ModelProto) -> None:
    inferred = {}
    for vi in list(m.graph.value_info) + list(m.graph.output):
        if not vi.type.tensor_type.HasField("shape"):  # after an op inference does not know
            continue
        dims = vi.type.tensor_type.shape.dim
        inferred[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    for name in an.act_owner:
        if name in inferred:
            want = an.shape_after(name, removed)
            if inferred[name] != want and -1 not in inferred[name]:
                raise SurgeryError(f"tensor {name!r}: inferred shape {inferred[name]} != expected {want}")
