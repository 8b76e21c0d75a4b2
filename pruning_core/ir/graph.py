"""Load and normalize an ONNX model into the IR the rest of the library works on.

Normalization: safe external data, concrete input shapes, shape inference, Constant nodes
turned into initializers, constant shape sub-graphs folded (so Reshape / Slice / Split targets
are constants), unique node names. Initializer names are kept: they are the parameter names
users know (``conv1.weight``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from pruning_core.errors import ModelLoadError, SpecError
from pruning_core.ir import check, runtime_shapes, weights

# Folding: never fold through an original initializer bigger than this (a weight): folding
# Transpose(W) would rename the parameter. Derived constants may be up to FOLD_MAX_OUT elements.
FOLD_MAX_WEIGHT_IN = 4096
FOLD_MAX_OUT = 1 << 22
# Ops whose output depends on more than their inputs: never fold.
NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
           "Bernoulli", "If", "Loop", "Scan",
           # a folded DequantizeLinear(W) would ship its weight as float: the model keeps its QDQ form
           "DequantizeLinear", "QuantizeLinear"}


class ShapeUnknownError(ModelLoadError, KeyError):
    """A tensor whose size neither shape inference nor a run of the model gives. A KeyError too:
    callers that can do without a shape (MAC counts of unknown nodes) catch it as before."""

    def __init__(self, g: Graph, name: str) -> None:
        node = g.producer.get(name)
        where = f" (output of {node.op_type} node {node.name!r})" if node is not None else ""
        why = (f"and it could not be measured: {g.shape_note}" if g.shape_note
               else "and a run of the model on onnxruntime does not give it as a tensor")
        super().__init__(f"the shape of tensor {name!r}{where} is unknown: ONNX shape inference leaves it "
                         f"symbolic {why}")

    def __str__(self) -> str:  # KeyError would quote the sentence
        return str(self.args[0]) if self.args else ""


@dataclass
class Graph:
    model: ModelProto
    path: Path | None
    inits: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, int]
    inputs: list[str]
    outputs: list[str]
    opset: int
    original_inits: set[str] = field(default_factory=set)
    producer: dict[str, NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[tuple[NodeProto, int]]] = field(default_factory=dict)
    # The model as read, before its dynamic input dims were fixed (stubs; the arrays are the
    # ones read): ir.signature normalizes it again at other sizes to give the saved result the
    # original's signature back. None for a graph built by hand.
    unfixed: ModelProto | None = None
    unfixed_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # Tensors whose shape was measured by running the model (ir.runtime_shapes), and why the
    # model could not run when some shape stayed unknown
    runtime_shaped: set[str] = field(default_factory=set)
    shape_note: str | None = None
    # ir.signature's symbols of this graph (with their probes), made once: every restore reuses them
    signature_symbols: list[Any] | None = field(default=None, repr=False)
    # ir.quant's scales and zero points of QDQ weights, found once
    qparams: dict[str, Any] | None = field(default=None, repr=False)

    def light(self) -> weights.LightModel:
        return weights.LightModel(self.model, self.inits)

    def full_model(self) -> ModelProto:
        """A complete copy of the model, weights inside (for the torch twin and other consumers
        that need one ModelProto; the pipeline itself never builds it)."""
        return weights.materialize(self.model, self.inits)

    @property
    def nodes(self) -> list[NodeProto]:
        return list(self.model.graph.node)

    def index(self) -> None:
        self.producer = {}
        self.consumers = {}
        for node in self.model.graph.node:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, i))

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.inits:
            return tuple(self.inits[name].shape)
        if name not in self.shapes:
            raise ShapeUnknownError(self, name)
        return self.shapes[name]


# ----------------------------------------------------------------------------------- loading


def load(model: str | os.PathLike[str] | ModelProto, input_shapes: dict[str, list[int]] | None = None,
         batch: int | None = None) -> Graph:
    """Read (if a path) and normalize a model. ``input_shapes`` fixes dynamic input dims; a dynamic
    batch axis not named there gets ``batch`` (``spec.runtime.batch``; 1 when None)."""
    path = None
    arrays: dict[str, np.ndarray] = {}
    if isinstance(model, ModelProto):
        m = ModelProto()
        m.CopyFrom(model)
    else:
        path = Path(model)
        m, arrays = weights.read(path)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset == 0:
        raise ModelLoadError("model has no default-domain opset import")
    if opset < 11:  # old models are small: convert the complete proto
        m = onnx.version_converter.convert_version(weights.materialize(m, arrays), 13)
        arrays = {}
        opset = 13
    # A newer onnx stamps an IR version runtimes may not know yet; what the model needs is the
    # minimum IR version for its opsets.
    try:
        need = helper.find_min_ir_version_for(list(m.opset_import), ignore_unknown=True)
        if m.ir_version > need:
            m.ir_version = need
    except Exception:  # an unknown domain: keep the declared version
        pass
    _name_nodes(m)
    check.structure(m)
    original = {t.name for t in m.graph.initializer}
    _constants_to_initializers(m)
    _drop_initializer_inputs(m)
    weights.strip(m, arrays)
    _unshare_vectors(m, arrays)
    original |= {t.name for t in m.graph.initializer}
    _name_unknown_dims(m)
    unfixed = ModelProto()
    unfixed.CopyFrom(m)  # light: stubs only
    _fix_input_shapes(m, input_shapes or {}, batch)
    check.consistent(m, arrays)
    g = _normalize(m, path, arrays, opset, original)
    g.unfixed, g.unfixed_arrays = unfixed, arrays
    return g


def reload(g: Graph, input_shapes: dict[str, list[int]]) -> Graph:
    """``g``'s model normalized again from the file's form, with other input shapes: which folded
    constants change with a dynamic dim (ir.signature). Nothing is read from disk."""
    if g.unfixed is None:
        raise ValueError("graph has no unfixed form (not built by load)")
    m = ModelProto()
    m.CopyFrom(g.unfixed)
    _fix_input_shapes(m, input_shapes)
    return _normalize(m, g.path, dict(g.unfixed_arrays), g.opset, set(g.original_inits))


def _normalize(m: ModelProto, path: Path | None, arrays: dict[str, np.ndarray], opset: int,
               original: set[str]) -> Graph:
    """Shape inference and constant folding of a model whose input shapes are fixed."""
    g = Graph(model=m, path=path, inits=arrays, shapes={}, dtypes={}, inputs=[i.name for i in m.graph.input],
              outputs=[o.name for o in m.graph.output], opset=opset, original_inits=original)
    _refresh(g)
    for _ in range(4):
        if not fold_constants(g):
            break
        _refresh(g)
        weights.strip(m, g.inits)
    _prune_dead(g)
    g.index()
    runtime_shapes.resolve(g)
    return g


def _refresh(g: Graph) -> None:
    """Re-run shape inference and rebuild the shape / initializer tables.

    Inference runs on a skeleton: large initializers become typed graph inputs, so the weights
    are never serialized (twice the model's size in time and memory otherwise)."""
    m = g.model
    del m.graph.value_info[:]
    skeleton_model = skeleton(m)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton_model, check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception as e:
        raise ModelLoadError(f"shape inference failed: {e}") from None
    m.graph.value_info.extend(inferred.graph.value_info)
    for out, inf in zip(m.graph.output, inferred.graph.output, strict=True):
        if not out.type.tensor_type.HasField("shape") or not all(
                d.HasField("dim_value") for d in out.type.tensor_type.shape.dim):
            out.CopyFrom(inf)
    known = g.inits
    g.inits = {t.name: known[t.name] if t.name in known and known[t.name].shape == tuple(t.dims)
               else to_array(t) for t in m.graph.initializer}  # stubs: always known
    g.shapes, g.dtypes = {}, {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        g.dtypes[vi.name] = tt.elem_type
        if all(d >= 0 for d in dims):
            g.shapes[vi.name] = dims
    for t in m.graph.initializer:
        g.shapes[t.name] = tuple(t.dims)
        g.dtypes[t.name] = t.data_type
    g.index()


def skeleton(m: ModelProto) -> ModelProto:
    """The graph with stubs and large initializers as typed inputs (shape constants stay, they
    must propagate): shape inference and the checker never serialize the weights."""
    return weights.as_inputs(m, weights.INLINE_MAX)


def to_array(t: TensorProto) -> np.ndarray:
    """Initializer data as numpy; a zero-copy, read-only view of raw data where possible."""
    if t.raw_data and t.data_type not in (TensorProto.STRING, TensorProto.BFLOAT16) and \
            t.data_type in helper.get_all_tensor_dtypes() and t.data_location != TensorProto.EXTERNAL:
        try:
            dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
            if dtype.kind in "fiub" and dtype.itemsize in (1, 2, 4, 8):
                return np.frombuffer(t.raw_data, dtype=dtype).reshape(tuple(t.dims))
        except (TypeError, ValueError):
            pass
    return numpy_helper.to_array(t)


def _name_nodes(m: ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(m.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def _constants_to_initializers(m: ModelProto) -> None:
    keep = []
    for node in m.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            a = node.attribute[0]
            if a.name == "value":
                arr = numpy_helper.to_array(a.t)
            elif a.name in ("value_float", "value_int"):
                arr = np.array(helper.get_attribute_value(a), dtype=np.float32 if a.name == "value_float" else np.int64)
            elif a.name in ("value_floats", "value_ints"):
                arr = np.array(helper.get_attribute_value(a),
                               dtype=np.float32 if a.name == "value_floats" else np.int64)
            else:
                keep.append(node)
                continue
            m.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
        else:
            keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)


QDQ = ("QuantizeLinear", "DequantizeLinear")


def _unshare_quantized_vectors(m: ModelProto) -> None:
    """A shared 1-D constant quantized once (onnxruntime.quantization on a dynamo export whose
    equal biases were merged) reaches its users through one QuantizeLinear / DequantizeLinear
    chain: every user after the first gets its own copy of the chain, whose initializer
    ``_unshare_vectors`` then copies as for any shared vector."""
    inits = {t.name: t for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}

    def constant_chain(name: str) -> list[NodeProto] | None:
        """The Q / DQ nodes from an initializer to ``name``, outermost last; None if not one."""
        chain: list[NodeProto] = []
        while name not in inits:
            node = producer.get(name)
            if node is None or node.op_type not in QDQ or not node.input or len(node.output) != 1:
                return None
            chain.append(node)
            name = node.input[0]
        return chain[::-1] if chain else None

    users: dict[str, list[tuple[NodeProto, int]]] = {}
    for node in m.graph.node:
        for i, name in enumerate(node.input):
            users.setdefault(name, []).append((node, i))
    out: list[NodeProto] = []
    for node in m.graph.node:
        for i, name in enumerate(node.input):
            chain = constant_chain(name) if name and name not in inits else None
            root = inits.get(chain[0].input[0]) if chain else None
            if chain is None or root is None or len(root.dims) != 1 or root.dims[0] <= 1:
                continue
            k = [u for u, _ in users[name]].index(node)
            if k == 0 or users[name][k][1] != i:
                continue  # the first user keeps the chain
            previous = chain[0].input[0]
            for link in chain:
                copy = NodeProto()
                copy.CopyFrom(link)
                copy.name = f"{link.name}__{k}"
                copy.input[0] = previous
                copy.output[0] = f"{link.output[0]}__{k}"
                previous = copy.output[0]
                out.append(copy)
            node.input[i] = previous
        out.append(node)
    del m.graph.node[:]
    m.graph.node.extend(out)


def _unshare_vectors(m: ModelProto, arrays: dict[str, np.ndarray]) -> None:
    """Give every user of a shared 1-D initializer its own copy.

    The dynamo exporter's optimizer merges equal constants: every zero bias and every LayerNorm
    weight of a fresh model become one tensor, which would couple unrelated layers. Matrices stay
    shared: tied weights (embedding = lm_head) are a real coupling."""
    _unshare_quantized_vectors(m)
    inits = {t.name: t for t in m.graph.initializer}
    seen: dict[str, int] = {}
    for node in m.graph.node:
        for i, name in enumerate(node.input):
            t = inits.get(name)
            if t is None or len(t.dims) != 1 or t.dims[0] <= 1:
                continue
            k = seen.get(name, 0)
            seen[name] = k + 1
            if k == 0:
                continue
            copy = TensorProto()
            copy.CopyFrom(t)
            copy.name = f"{name}__{k}"
            if name in arrays:  # a stub: the copy shares the (read-only) data
                arrays[copy.name] = arrays[name]
            m.graph.initializer.append(copy)
            node.input[i] = copy.name


def _name_unknown_dims(m: ModelProto) -> None:
    """Some exporters (Paddle) declare an unknown dim as ``-1`` (invalid: inference then finds 1
    "differs" from -1) or name every unknown dim ``?`` (which would make height and width one
    symbol). Each such dim of the inputs and outputs gets its own symbol, so the saved model
    declares them unknown and independent, as they were meant."""
    n = 0
    for vi in list(m.graph.input) + list(m.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if (d.HasField("dim_value") and d.dim_value < 0) or (d.HasField("dim_param") and d.dim_param in ("?", "-1")):
                d.Clear()
                d.dim_param = f"unk__{n}"
                n += 1
    for vi in m.graph.value_info:
        if any(d.HasField("dim_value") and d.dim_value < 0 for d in vi.type.tensor_type.shape.dim):
            vi.type.tensor_type.ClearField("shape")


def _drop_initializer_inputs(m: ModelProto) -> None:
    """Old exporters list initializers as graph inputs; they are parameters, not inputs."""
    names = {t.name for t in m.graph.initializer}
    real = [i for i in m.graph.input if i.name not in names]
    if len(real) != len(m.graph.input):
        del m.graph.input[:]
        m.graph.input.extend(real)


def _fix_input_shapes(m: ModelProto, shapes: dict[str, list[int]], batch: int | None = None) -> None:
    names = [i.name for i in m.graph.input]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise SpecError(f"unknown input name(s) {unknown}; the model's inputs are {names}")
    for inp in m.graph.input:
        tt = inp.type.tensor_type
        dims = list(tt.shape.dim)
        if inp.name in shapes:
            want = [int(d) for d in shapes[inp.name]]
            if len(want) != len(dims):
                raise SpecError(f"input {inp.name!r} has rank {len(dims)}, input_shapes gives {want}")
            for d, w in zip(dims, want, strict=True):
                if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != w:
                    raise SpecError(f"input {inp.name!r} has fixed dim {d.dim_value}, input_shapes gives {w}")
                d.Clear()
                d.dim_value = w
            continue
        for axis, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                if axis == 0 and batch is not None and d.dim_value != batch and len(dims) > 1:
                    raise SpecError(f"runtime.batch is {batch}, but input {inp.name!r} has a fixed batch of "
                                    f"{d.dim_value}; export the model with a dynamic batch axis or drop runtime.batch")
                continue
            if axis == 0:  # a dynamic batch axis: runtime.batch, else 1
                d.Clear()
                d.dim_value = batch or 1
                continue
            shown = [x.dim_value if x.HasField("dim_value") and x.dim_value > 0 else (x.dim_param or "?") for x in dims]
            raise SpecError(f"input {inp.name!r} has dynamic shape {shown}; give concrete dims with "
                            f"input_shapes (CLI: --input-shape {inp.name}=...)")


# ------------------------------------------------------------------------------ evaluation


def _axes(node: NodeProto, inputs: list[np.ndarray | None], opset: int, since: int) -> list[int] | None:
    """Squeeze / Unsqueeze axes: an input from opset ``since`` on, an attribute before."""
    if opset >= since:
        return [int(a) for a in inputs[1]] if len(inputs) > 1 and inputs[1] is not None else None
    ax = attr(node, "axes", None)
    return [int(a) for a in ax] if ax is not None else None


def _reshape(node: NodeProto, ins: list, opset: int) -> list[np.ndarray]:
    data, shape = ins[0], np.array(ins[1], dtype=np.int64)
    if not attr(node, "allowzero", 0):
        zero = np.nonzero(shape == 0)[0]
        shape[zero] = np.array(data.shape, dtype=np.int64)[zero]
    return [data.reshape(tuple(int(d) for d in shape))]


def _unsqueeze(node: NodeProto, ins: list, opset: int) -> list[np.ndarray]:
    axes = _axes(node, ins, opset, 13) or []
    rank = ins[0].ndim + len(axes)
    return [np.expand_dims(ins[0], tuple(sorted(a % rank for a in axes)))]


def _squeeze(node: NodeProto, ins: list, opset: int) -> list[np.ndarray]:
    axes = _axes(node, ins, opset, 13)
    x = ins[0]
    return [np.squeeze(x) if axes is None else np.squeeze(x, tuple(a % x.ndim for a in axes))]


def _flatten(node: NodeProto, ins: list, opset: int) -> list[np.ndarray]:
    x = ins[0]
    axis = attr(node, "axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)]


def _gather_elements(node: NodeProto, ins: list) -> np.ndarray:
    data, idx = ins[0], np.asarray(ins[1], np.int64)
    axis = attr(node, "axis", 0) % data.ndim
    return np.take_along_axis(data, np.where(idx < 0, idx + data.shape[axis], idx), axis=axis)


# numpy fast paths for the ops folding and label propagation meet most (movement and shape
# plumbing); anything else goes through onnx's reference evaluator
_FAST: dict[str, Callable[[NodeProto, list, int], list[np.ndarray]]] = {
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Flatten": _flatten,
    "Identity": lambda node, ins, opset: [ins[0]],
    "Transpose": lambda node, ins, opset: [np.transpose(ins[0], attr(node, "perm", None))],
    "Gather": lambda node, ins, opset: [np.take(ins[0], np.asarray(ins[1], np.int64), axis=attr(node, "axis", 0))],
    "GatherElements": lambda node, ins, opset: [_gather_elements(node, ins)],
    "Concat": lambda node, ins, opset: [np.concatenate([i for i in ins if i is not None], axis=attr(node, "axis", 0))],
}


def run_node(node: NodeProto, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """Evaluate one node (used for folding and labels): numpy for the common movement ops, onnx's
    reference implementation for the rest."""
    fast = _FAST.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if fast is not None and all(a is not None for a in inputs[:1]):
        return [np.asarray(r) for r in fast(node, inputs, opset)]
    from onnx.reference import ReferenceEvaluator

    in_names = [n if n else "" for n in node.input]
    graph_inputs = []
    feeds = {}
    for name, arr in zip(in_names, inputs, strict=True):
        if not name:
            continue
        if arr is None:
            raise ValueError(f"missing input {name!r}")
        if name not in feeds:
            graph_inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))
            feeds[name] = arr
    outs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output if o]
    g = helper.make_graph([node], "eval", graph_inputs, outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    sess = ReferenceEvaluator(m)
    res = sess.run(None, feeds)
    return [np.asarray(r) for r in res]


RECURRENT = ("LSTM", "GRU", "RNN")


def _recurrent_weight_sources(g: Graph) -> set[str]:
    """Tensors that only assemble a recurrent op's W / R / B (torch's dynamo exporter slices the
    gate blocks into ONNX's order and stacks the directions): folded into one initializer each,
    whatever their size, so that the hidden size can be a group. The result is a weight of the
    model (``original_inits``)."""
    users: dict[str, list[tuple[NodeProto, int]]] = {}
    for node in g.model.graph.node:
        for i, name in enumerate(node.input):
            users.setdefault(name, []).append((node, i))
    found: set[str] = set()
    # nodes are in topological order: backwards, every user is decided before its producer
    for node in reversed(g.model.graph.node):
        if node.op_type in NO_FOLD:
            continue
        outs = [o for o in node.output if o]
        uses = [u for o in outs for u in users.get(o, [])]
        if uses and all((u.op_type in RECURRENT and i in (1, 2, 3)) or any(o in found for o in u.output)
                        for u, i in uses):
            found.update(outs)
    return found


def fold_constants(g: Graph) -> bool:
    """Fold nodes whose inputs are all constants (and Shape/Size of static tensors)."""
    m = g.model
    recurrent = _recurrent_weight_sources(g) if any(n.op_type in RECURRENT for n in m.graph.node) else set()
    changed = False
    new_nodes: list[NodeProto] = []
    consts: dict[str, np.ndarray] = dict(g.inits)
    new_inits: list[TensorProto] = []
    for node in m.graph.node:
        folded = None
        weight_only = bool(recurrent) and all(o in recurrent for o in node.output if o)
        if node.domain in ("", "ai.onnx") and node.op_type not in NO_FOLD:
            if node.op_type == "Shape" and node.input[0] in g.shapes:
                shp = np.array(g.shapes[node.input[0]], dtype=np.int64)
                start = attr(node, "start", 0)
                end = attr(node, "end", None)
                folded = [shp[start:end]]
            elif node.op_type == "Size" and node.input[0] in g.shapes:
                folded = [np.array(int(np.prod(g.shapes[node.input[0]])), dtype=np.int64)]
            elif all((not n) or n in consts for n in node.input) and node.input:
                big = not weight_only and any(n in g.original_inits and consts[n].size > FOLD_MAX_WEIGHT_IN
                                              for n in node.input if n)
                if not big:
                    try:
                        folded = run_node(node, [consts[n] if n else None for n in node.input], g.opset)
                    except Exception:
                        folded = None
        if folded is not None and (weight_only or all(a.size <= FOLD_MAX_OUT for a in folded)) and \
                not any(o in g.outputs for o in node.output):
            if weight_only:
                g.original_inits.update(o for o in node.output if o)
            for name, arr in zip([o for o in node.output if o], folded, strict=False):
                consts[name] = arr
                new_inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
            changed = True
        else:
            new_nodes.append(node)
    if changed:
        del m.graph.node[:]
        m.graph.node.extend(new_nodes)
        m.graph.initializer.extend(new_inits)
    return changed


def _prune_dead(g: Graph) -> None:
    """Drop nodes and initializers that no graph output depends on."""
    m = g.model
    needed = set(g.outputs)
    keep: list[NodeProto] = []
    for node in reversed(list(m.graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(n for n in [*node.input, *check.implicit_inputs(node)] if n)
    keep.reverse()
    if len(keep) != len(m.graph.node):
        del m.graph.node[:]
        m.graph.node.extend(keep)
    inits = [t for t in m.graph.initializer if t.name in needed]
    if len(inits) != len(m.graph.initializer):
        del m.graph.initializer[:]
        m.graph.initializer.extend(inits)
        g.inits = {k: v for k, v in g.inits.items() if k in needed}


def origin(name: str, names: Container[str]) -> str | None:
    """The tensor of ``names`` that ``name`` is, or a private copy of (``<name>__<suffix>``: one
    user's copy of a shared initializer, made here by ``_unshare_vectors`` and by surgery)."""
    cut = len(name)
    while cut > 0:
        if name[:cut] in names:
            return name[:cut]
        cut = name.rfind("__", 0, cut)
    return None


def attr(node: NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default

