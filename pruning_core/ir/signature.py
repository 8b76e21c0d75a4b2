"""The saved result keeps the original's signature (input and output names, dtypes, dims).

Analysis, verification and measurement run at concrete input shapes (a dynamic batch axis at 1,
other dynamic dims as ``input_shapes`` says), and normalization folds shape computations at those
sizes: a ``Reshape`` target reads ``[1, 16, 4, 16]`` where the file computed ``[batch, 16, 4, 16]``,
an attention mask becomes a ``[1, 1, 16, 16]`` constant. :func:`restore` turns the pruned graph
back into one that runs at every size the original ran at.

Each dynamic dim of the original inputs is a *symbol* (the dims sharing a ``dim_param``, or one
unnamed dim). The model is normalized again with the symbol doubled (:func:`graph.reload`); a
folded constant that changes is a function of it. Two forms are rewritten, each checked to be
linear in the symbol:

- vectors (shape operands: ``Reshape`` / ``Expand`` / ``Resize`` / ``ConstantOfShape`` targets)
  whose entries are the symbol times a constant: a ``Reshape`` target gets 0 (copy the input's
  dim) or -1 there; any other operand is computed at run time, ``c * Shape(input)[axis]``;
- tensors broadcast along the symbol's axes (masks, expanded class tokens, position ids): one
  slice, ``Expand``-ed to the run-time size.

A symbol some constant depends on in another way is *pinned*: the saved model keeps the concrete
size analysis used there (logged). Inputs and outputs get the original's value infos back (a
pinned symbol's dims concrete, an output dim pruning changed with its new value); intermediate
value infos, inferred at the fixed sizes, are dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper

from pruning_core.ir import graph as graph_mod
from pruning_core.ir import weights
from pruning_core.ir.weights import LightModel

log = logging.getLogger(__name__)

PROBE_FACTOR = 2  # a symbol's probe size: the analysis size times this (keeps divisibility)


@dataclass(eq=False)
class Symbol:
    name: str                       # the dim_param, or "input[axis]" for an unnamed dim
    dims: list[tuple[str, int]]     # (input, axis) holding it
    base: int                       # the size analysis used
    probe: graph_mod.Graph | None = None
    pinned: str | None = None       # why it keeps its concrete size
    probe3: graph_mod.Graph | None = None  # at three times the size, made when a check needs it
    probed3: bool = False


@dataclass
class _Plan:
    """How one folded constant of the pruned graph depends on the symbols."""

    name: str                                   # initializer of the pruned graph
    base: np.ndarray                            # its value in the analysed graph
    probes: dict[Symbol, np.ndarray] = field(default_factory=dict)
    steps: dict[Symbol, np.ndarray] = field(default_factory=dict)  # rows form: row b = row 0 + b * step


def symbols(g: graph_mod.Graph) -> list[Symbol]:
    """The dynamic dims of ``g``'s original inputs, with the sizes analysis fixed them to. Kept on
    ``g``: their probes (``g`` normalized at another size) serve every later restore, e.g. each
    try of a latency target."""
    if g.unfixed is None:
        return []
    if g.signature_symbols is not None:
        return g.signature_symbols
    fixed = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.model.graph.input}
    by_name: dict[str, Symbol] = {}
    out: list[Symbol] = []
    for inp in g.unfixed.graph.input:
        for axis, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            size = fixed[inp.name][axis]
            name = d.dim_param if d.HasField("dim_param") and d.dim_param else f"{inp.name}[{axis}]"
            s = by_name.get(name)
            if s is None:
                s = by_name[name] = Symbol(name, [], size)
                out.append(s)
            s.dims.append((inp.name, axis))
            if size != s.base:
                s.pinned = f"its dims were fixed to different sizes ({s.base}, {size})"
    g.signature_symbols = out
    return out


def restore(model: LightModel | ModelProto, g: graph_mod.Graph) -> LightModel | ModelProto:
    """``model`` (the pruned graph of ``g``) with the original's signature; ``model`` itself is
    not changed (a light model's arrays are shared)."""
    if g.unfixed is None:
        return model
    light = isinstance(model, LightModel)
    proto = ModelProto()
    proto.CopyFrom(model.proto if isinstance(model, LightModel) else model)
    arrays: dict[str, np.ndarray] = dict(model.arrays) if isinstance(model, LightModel) else {}
    syms = symbols(g)
    fixed = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.model.graph.input}
    for s in syms:
        if s.pinned or s.probe is not None:
            continue
        shapes = {k: list(v) for k, v in fixed.items()}
        for inp, axis in s.dims:
            shapes[inp][axis] = s.base * PROBE_FACTOR
        try:
            s.probe = graph_mod.reload(g, shapes)
        except Exception as e:  # the model does not take that size: keep the analysed one
            s.pinned = f"the model does not normalize at {s.name}={s.base * PROBE_FACTOR} ({e})"
    rw = _Rewriter(proto, arrays, light, g)
    plans = [p for p in (rw.plan(t, syms) for t in list(proto.graph.initializer)) if p is not None]
    for p in plans:
        rw.check(p)
    for p in plans:
        rw.apply(p)
    rw.finish()
    _signature(proto, g, syms)
    if rw.new_nodes or rw.replaced:  # the rewritten graph is what ships: strict shape inference
        onnx.checker.check_model(graph_mod.skeleton(proto), full_check=True)
    for s in syms:
        if s.pinned:
            log.warning("input dim %s stays %d in the saved model: %s", s.name, s.base, s.pinned)
    return LightModel(proto, arrays) if light else proto


# ------------------------------------------------------------------------------ constants


class _Rewriter:
    def __init__(self, proto: ModelProto, arrays: dict[str, np.ndarray], light: bool, g: graph_mod.Graph) -> None:
        self.proto, self.arrays, self.light, self.g = proto, arrays, light, g
        self.inits = {t.name: t for t in proto.graph.initializer}
        self.consumers: dict[str, list[tuple[NodeProto, int]]] = {}
        for node in proto.graph.node:
            for i, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, i))
            for name in _subgraph_reads(node):  # outer names a branch / loop body reads
                self.consumers.setdefault(name, []).append((node, -1))
        self.pruned_shapes = {vi.name: _dims(vi) for vi in proto.graph.value_info}
        self.new_nodes: list[NodeProto] = []
        self.dropped: set[str] = set()
        self.replaced = 0
        self.syms: dict[Symbol, str] = {}
        self.names = {o for n in proto.graph.node for o in n.output} | set(self.inits) | \
            {i.name for i in proto.graph.input}

    # -- reading

    def value(self, name: str) -> np.ndarray:
        t = self.inits[name]
        return self.arrays[name] if weights.is_stub(t) else graph_mod.to_array(t)

    def base_name(self, name: str) -> str | None:
        """The analysed graph's constant behind ``name`` (surgery gives a shared one a private
        copy, ``<name>__<node>``); None for an original initializer or one surgery made."""
        base = graph_mod.origin(name, self.g.inits)
        return None if base is None or base in self.g.original_inits else base

    def plan(self, t: TensorProto, syms: list[Symbol]) -> _Plan | None:
        base_name = self.base_name(t.name)
        if base_name is None or t.name not in self.consumers:
            return None
        vb = self.g.inits[base_name]
        p = _Plan(t.name, vb)
        for s in syms:
            if s.pinned or s.probe is None:
                continue
            vp = s.probe.inits.get(base_name)
            if vp is None:
                s.pinned = f"constant {base_name!r} is not folded at another size"
            elif vp.shape != vb.shape or not np.array_equal(vp, vb):
                p.probes[s] = vp
        return p if p.probes else None

    # -- checking: a symbol whose dependence is of neither form is pinned

    def check(self, p: _Plan) -> None:
        vq = self.value(p.name)
        vector = p.base.ndim <= 1 and all(vp.shape == p.base.shape for vp in p.probes.values())
        for s, vp in p.probes.items():
            why = self._vector_why(p.base, vp, vq, s) if vector else self._rows_why(p, vp, vq, s)
            if why is not None and not s.pinned:
                s.pinned = f"constant {p.name!r} {why}"

    @staticmethod
    def _vector_why(vb: np.ndarray, vp: np.ndarray, vq: np.ndarray, s: Symbol) -> str | None:
        if vq.shape != vb.shape or vb.dtype.kind not in "iuf":
            return "is not a numeric vector"
        changed = vb.reshape(-1) != vp.reshape(-1)
        b, q = vb.reshape(-1)[changed], vp.reshape(-1)[changed]
        if not np.array_equal(q, b * PROBE_FACTOR):
            return f"is not proportional to {s.name}"
        if vb.dtype.kind in "iu" and (np.any(b % s.base) or np.any(vq.reshape(-1)[changed] % s.base)):
            return f"is not a multiple of {s.name}"
        return None

    def _rows_why(self, p: _Plan, vp: np.ndarray, vq: np.ndarray, s: Symbol) -> str | None:
        """None if ``p`` is one slice broadcast along the axes the symbol sizes, or, along one
        axis of exactly the symbol's size, rows ``row0 + b * step`` (index tensors built from
        ``arange(batch)``); records the step."""
        vb = p.base
        if vp.ndim != vb.ndim or vq.ndim != vb.ndim:
            return "changes rank with the size"
        axes = [a for a in range(vb.ndim) if vb.shape[a] != vp.shape[a]]
        if not axes:
            return "changes its values with the size"
        for a in axes:
            if vb.shape[a] % s.base or vq.shape[a] % s.base or vp.shape[a] != vb.shape[a] * PROBE_FACTOR:
                return f"is not sized in proportion to {s.name}"
        rb, rp, rq = (_slice(v, axes) for v in (vb, vp, vq))
        if np.array_equal(rb, rp) and all(np.array_equal(v, np.broadcast_to(r, v.shape))
                                          for v, r in ((vb, rb), (vp, rp), (vq, rq))):
            return None
        # rows along one axis: row b = row 0 + b * step, the same step at every size
        a = axes[0]
        if len(axes) != 1 or vb.shape[a] != s.base or vb.dtype.kind not in "iu" or not np.array_equal(rb, rp) \
                or not np.array_equal(rq, rb):  # surgery changed it: its step is unknown
            return f"is neither a broadcast nor an index along {s.name}"
        step = np.take(vp, [1], axis=a) - rp
        probe3 = self._probe3(s)
        v3 = probe3.inits.get(self.base_name(p.name) or "") if probe3 is not None else None
        if v3 is None or not all(np.array_equal(v, rp + _arange(v.shape[a], a, v.ndim) * step) for v in (vb, vp, v3)):
            return f"is neither a broadcast nor an index along {s.name}"
        p.steps[s] = step
        return None

    def _probe3(self, s: Symbol) -> graph_mod.Graph | None:
        """The model normalized at three times the symbol's size (checks a row step is linear)."""
        if not s.probed3:
            s.probed3 = True
            fixed = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in self.g.model.graph.input}
            for inp, axis in s.dims:
                fixed[inp][axis] = s.base * 3
            try:
                s.probe3 = graph_mod.reload(self.g, fixed)
            except Exception:
                s.probe3 = None
        return s.probe3

    # -- rewriting

    def apply(self, p: _Plan) -> None:
        live = {s: vp for s, vp in p.probes.items() if not s.pinned}
        if not live:
            return
        vq = self.value(p.name)
        if p.base.ndim <= 1 and all(vp.shape == p.base.shape for vp in live.values()):
            self._apply_vector(p, live, vq)
        else:
            self._apply_rows(p, live, vq)

    def _apply_vector(self, p: _Plan, live: dict[Symbol, np.ndarray], vq: np.ndarray) -> None:
        flat_b, flat_q = p.base.reshape(-1), vq.reshape(-1)
        deps: dict[int, list[Symbol]] = {}
        for s, vp in live.items():
            for i in np.nonzero(flat_b != vp.reshape(-1))[0]:
                deps.setdefault(int(i), []).append(s)
        users = self.consumers[p.name]
        if vq.ndim == 1 and vq.dtype == np.int64 and all(
                n.op_type == "Reshape" and i == 1 and not graph_mod.attr(n, "allowzero", 0) for n, i in users):
            targets = [self._reshape_target(n, vq, flat_b, deps, live) for n, _ in users]
            if all(np.array_equal(t, targets[0]) for t in targets) and all(targets[0][i] in (0, -1) for i in deps):
                self._replace(p.name, targets[0])
                return
        entries: list[int | float | tuple[float, list[Symbol]]] = []
        for i, v in enumerate(flat_q.tolist()):
            if i in deps:
                per = int(np.prod([s.base for s in deps[i]]))
                entries.append((v // per if vq.dtype.kind in "iu" else v / per, deps[i]))
            else:
                entries.append(v)
        self.dropped.add(p.name)
        self._vector(entries, vq.dtype, p.name, scalar=vq.ndim == 0)

    def _reshape_target(self, node: NodeProto, vq: np.ndarray, vb: np.ndarray, deps: dict[int, list[Symbol]],
                        live: dict[Symbol, np.ndarray]) -> np.ndarray:
        """The target with dependent entries as 0 where the input's dim is the same multiple of
        the same symbols (at the analysed and the probed sizes, and after pruning), and one
        entry left as -1; an entry neither can express stays (the caller computes the vector)."""
        x = node.input[0]
        target = vq.copy()
        shape = self.g.shapes.get(x)
        pruned = self.pruned_shapes.get(x)
        rest = []
        for i, ss in sorted(deps.items()):
            ok = shape is not None and i < len(shape) and shape[i] == vb[i] and \
                (pruned is None or (len(pruned) == len(shape) and pruned[i] in (vq[i], -1)))
            for s in ss:
                probed = s.probe.shapes.get(x) if s.probe is not None else None
                ok = ok and probed is not None and len(probed) == len(shape) and probed[i] == live[s][i]
            if ok:
                target[i] = 0
            else:
                rest.append(i)
        if len(rest) == 1 and -1 not in vq.tolist():
            target[rest[0]] = -1
        return target

    def _apply_rows(self, p: _Plan, live: dict[Symbol, np.ndarray], vq: np.ndarray) -> None:
        """``p`` as Expand(one slice, run-time shape) plus, for an index, arange(size) * step."""
        axes: dict[int, list[Symbol]] = {}
        for s, vp in live.items():
            for a in range(p.base.ndim):
                if p.base.shape[a] != vp.shape[a]:
                    axes.setdefault(a, []).append(s)
        one = np.ascontiguousarray(_slice(vq, list(axes)))
        entries: list[int | float | tuple[float, list[Symbol]]] = [
            (vq.shape[a] // int(np.prod([s.base for s in axes[a]])), axes[a]) if a in axes else 1
            for a in range(vq.ndim)]
        shape = self._fresh(f"{p.name}__shape")
        self._vector(entries, np.dtype(np.int64), shape, scalar=False)
        steps = [(s, step) for s, step in p.steps.items() if s in live]
        out = self._fresh(f"{p.name}__expand") if steps else p.name
        self.new_nodes.append(helper.make_node("Expand", [self._const(p.name, one), shape], [out],
                                               name=self._fresh(f"{p.name}__expand")))
        for i, (s, step) in enumerate(steps):
            a = next(ax for ax, ss in axes.items() if s in ss)
            size = self._node("Reshape", [self._symbol(s), self._const(p.name, np.zeros(0, np.int64))], p.name)
            zero, one_ = (self._const(p.name, np.array(v, np.int64)) for v in (0, 1))
            rows = self._node("Range", [zero, size, one_], p.name)
            rows = self._node("Reshape", [rows, self._const(p.name, np.array(
                [-1 if k == a else 1 for k in range(vq.ndim)], np.int64))], p.name)
            if vq.dtype != np.int64:
                rows = self._node("Cast", [rows], p.name, to=helper.np_dtype_to_tensor_dtype(vq.dtype))
            rows = self._node("Mul", [rows, self._const(p.name, np.ascontiguousarray(step))], p.name)
            last = i == len(steps) - 1
            nxt = p.name if last else self._fresh(f"{p.name}__add")
            self.new_nodes.append(helper.make_node("Add", [out, rows], [nxt], name=self._fresh(f"{p.name}__add")))
            out = nxt
        self.dropped.add(p.name)

    def _vector(self, entries: list, dtype: np.dtype, out: str, scalar: bool) -> None:
        """Nodes computing ``out``: constants and ``c * product of symbols`` entries, concatenated."""
        pieces: list[str] = []
        run: list = []

        def flush() -> None:
            if run:
                pieces.append(self._const(out, np.array(run, dtype=dtype)))
                run.clear()

        for e in entries:
            if not isinstance(e, tuple):
                run.append(e)
                continue
            flush()
            c, ss = e
            term = self._product(ss)
            if dtype != np.int64:
                term = self._node("Cast", [term], out, to=helper.np_dtype_to_tensor_dtype(dtype))
            if c != 1:
                term = self._node("Mul", [term, self._const(out, np.array([c], dtype=dtype))], out)
            pieces.append(term)
        flush()
        if scalar:
            joined = pieces[0]
            self.new_nodes.append(helper.make_node("Reshape", [joined, self._const(out, np.zeros(0, np.int64))],
                                                   [out], name=self._fresh(f"{out}__reshape")))
        else:
            self.new_nodes.append(helper.make_node("Concat", pieces, [out], name=self._fresh(f"{out}__concat"),
                                                   axis=0))

    def _product(self, ss: list[Symbol]) -> str:
        names = [self._symbol(s) for s in ss]
        out = names[0]
        for other in names[1:]:
            out = self._node("Mul", [out, other], "spa_sig")
        return out

    def _symbol(self, s: Symbol) -> str:
        """A [1] int64 tensor holding the symbol's run-time size: Shape(input)[axis]."""
        if s not in self.syms:
            inp, axis = s.dims[0]
            shape = self._node("Shape", [inp], f"{inp}__shape")
            self.syms[s] = self._node("Gather", [shape, self._const(inp, np.array([axis], np.int64))],
                                      f"{inp}__dim{axis}", axis=0)
        return self.syms[s]

    def _node(self, op: str, inputs: list[str], stem: str, **attrs) -> str:
        out = self._fresh(f"{stem}__{op.lower()}")
        self.new_nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def _const(self, stem: str, value: np.ndarray) -> str:
        name = self._fresh(f"{stem}__const")
        self._add_init(name, value)
        return name

    def _add_init(self, name: str, value: np.ndarray) -> None:
        if self.light and value.size > weights.INLINE_MAX:
            self.arrays[name] = value
            t = weights.stub(name, value)
        else:
            t = numpy_helper.from_array(value, name)
        self.proto.graph.initializer.append(t)
        self.inits[name] = self.proto.graph.initializer[-1]

    def _replace(self, name: str, value: np.ndarray) -> None:
        self.replaced += 1
        self.inits[name].CopyFrom(numpy_helper.from_array(value, name))
        self.arrays.pop(name, None)

    def _fresh(self, stem: str) -> str:
        name, k = stem, 0
        while name in self.names:
            k += 1
            name = f"{stem}_{k}"
        self.names.add(name)
        return name

    def finish(self) -> None:
        """Drop the constants now computed, and those nothing reads (surgery's leftovers when it
        gave a shared constant private copies); the new nodes go first."""
        g = self.proto.graph
        read = {n for node in list(g.node) + self.new_nodes for n in [*node.input, *_subgraph_reads(node)]}
        read |= {o.name for o in g.output}
        self.dropped |= {t.name for t in g.initializer if t.name not in read}
        if self.dropped:
            keep = [t for t in g.initializer if t.name not in self.dropped]
            del g.initializer[:]
            g.initializer.extend(keep)
            for name in self.dropped:
                self.arrays.pop(name, None)
        if self.new_nodes:  # they read only graph inputs and constants: first
            nodes = self.new_nodes + list(g.node)
            del g.node[:]
            g.node.extend(nodes)


def _subgraph_reads(node: NodeProto) -> set[str]:
    """Names the subgraphs of ``node`` (If / Loop / Scan bodies) read from outside."""
    out: set[str] = set()
    for a in node.attribute:
        for sub in [a.g] if a.HasField("g") else list(a.graphs):
            inner = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for n in sub.node:
                inner |= set(n.output)
            for n in sub.node:
                out |= {i for i in [*n.input, *_subgraph_reads(n)] if i and i not in inner}
    return out


def _arange(n: int, axis: int, rank: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64).reshape(tuple(n if k == axis else 1 for k in range(rank)))


def _slice(v: np.ndarray, axes: list[int]) -> np.ndarray:
    idx = tuple(slice(0, 1) if a in axes else slice(None) for a in range(v.ndim))
    return v[idx]


def _dims(vi: ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)


# ------------------------------------------------------------------------------ signature


def _signature(proto: ModelProto, g: graph_mod.Graph, syms: list[Symbol]) -> None:
    """Inputs and outputs as the original declares them; no intermediate value infos."""
    assert g.unfixed is not None
    pinned = {s.name: s for s in syms if s.pinned}
    pinned_dims = {(inp, axis): s.base for s in pinned.values() for inp, axis in s.dims}
    original_in = {i.name: i for i in g.unfixed.graph.input}
    inputs = []
    for inp in proto.graph.input:
        vi = ValueInfoProto()
        vi.CopyFrom(original_in.get(inp.name, inp))
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if (inp.name, axis) in pinned_dims:
                d.Clear()
                d.dim_value = pinned_dims[(inp.name, axis)]
        inputs.append(vi)
    original_out = {o.name: o for o in g.unfixed.graph.output}
    outputs = []
    for out in proto.graph.output:
        vi = ValueInfoProto()
        vi.CopyFrom(original_out.get(out.name, out))
        now = _dims(out) if out.type.tensor_type.HasField("shape") else ()
        dims = vi.type.tensor_type.shape.dim
        if len(now) == len(dims):
            for axis, d in enumerate(dims):
                concrete = d.HasField("dim_value") and d.dim_value > 0
                if now[axis] > 0 and (concrete or (d.HasField("dim_param") and d.dim_param in pinned)):
                    d.Clear()
                    d.dim_value = now[axis]
        outputs.append(vi)
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    del proto.graph.value_info[:]
