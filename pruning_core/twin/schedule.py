"""The twin's view of an ONNX graph before it runs: which nodes it can run, in what order, and when
each value can be freed.

:class:`OnnxTwin <pruning_core.twin.executor.OnnxTwin>` compiles a graph into :class:`Step` s (one
per node, ``If`` branches into :class:`Branch` es) with the helpers here; ``supported_ops`` and
``unsupported_nodes`` answer what the twin can run without building one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import onnx

from pruning_core.errors import ModelLoadError
from pruning_core.twin.ops import CHECKS, OPS, Attrs, OpFn, decode_attributes

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclasses.dataclass
class Step:
    """One node, resolved once at construction."""

    fn: OpFn | None
    attrs: Attrs
    inputs: tuple[str, ...]  # "" for an absent optional input
    outputs: tuple[str, ...]
    free: tuple[str, ...] = ()  # values whose last consumer is this step (freed after it)
    deps: tuple[str, ...] = ()  # inputs plus outer-scope names its subgraphs read (If)
    branches: tuple[Branch, Branch] | None = None  # If: (then, else)


@dataclasses.dataclass
class Branch:
    """A compiled If branch: runs in a copy of the outer environment."""

    steps: list[Step]
    outputs: tuple[str, ...]
    consts: dict[str, str]  # subgraph initializer name -> buffer attribute


def supported_ops() -> frozenset[str]:
    """The ONNX op types (default domain) the twin can run."""
    return frozenset(OPS)


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            return int(imp.version)
    return 1


def unsupported_nodes(model: onnx.ModelProto) -> dict[str, list[str]]:
    """``{op type: [node names]}`` for every node the twin cannot run (empty when it can run all)."""
    model = prepare(model)
    bad: dict[str, list[str]] = {}
    collect_unsupported(model.graph, opset_of(model), bad)
    return bad


def collect_unsupported(graph: onnx.GraphProto, opset: int, bad: dict[str, list[str]]) -> None:
    for i, node in enumerate(graph.node):
        label = node_label(node, i)
        if node.op_type == "If" and node.domain in DEFAULT_DOMAINS:
            for at in node.attribute:
                if at.type == onnx.AttributeProto.GRAPH:
                    collect_unsupported(at.g, opset, bad)
        if node.domain not in DEFAULT_DOMAINS:
            bad.setdefault(f"{node.domain}::{node.op_type}", []).append(label)
            continue
        if node.op_type not in OPS:
            bad.setdefault(node.op_type, []).append(label)
            continue
        checker = CHECKS.get(node.op_type)
        if checker is not None:
            attrs = Attrs(
                decode_attributes(node),
                op_type=node.op_type,
                opset=opset,
                num_outputs=len(node.output),
                node_name=label,
            )
            reason = checker(attrs)
            if reason:
                bad.setdefault(f"{node.op_type} [{reason}]", []).append(label)


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A node's name for messages; unnamed nodes are named by op type and graph position."""
    return node.name or f"<unnamed {node.op_type} #{index}>"


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline model-local functions (the dynamo exporter may emit them) so only primitives remain."""
    if len(model.functions):
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    return model


def outer_refs(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from enclosing scopes (ONNX subgraphs may use outer values)."""
    defined = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    refs: set[str] = set()
    for node in graph.node:
        refs.update(n for n in node_deps(node) if n not in defined)
        defined.update(node.output)
    refs.update(o.name for o in graph.output if o.name not in defined)
    return refs


def node_deps(node: onnx.NodeProto) -> list[str]:
    deps = [n for n in node.input if n]
    for at in node.attribute:
        if at.type == onnx.AttributeProto.GRAPH:
            deps.extend(sorted(outer_refs(at.g)))
    return deps


def toposort(nodes: Sequence[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes in an executable order (ONNX requires topological order, but not every tool obeys)."""
    ready = set(available)
    in_order = True
    for node in nodes:
        if not all(n in ready for n in node_deps(node)):
            in_order = False
            break
        ready.update(node.output)
    if in_order:
        return list(nodes)
    ready = set(available)
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(n in ready for n in node_deps(node)):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({n for node in rest for n in node_deps(node) if n not in ready})
            raise ModelLoadError(f"graph has a cycle or undefined inputs: {missing[:10]}")
        pending = rest
    return ordered


def plan_frees(steps: list[Step], keep: set[str], freeable: set[str] | None) -> None:
    """Set each step's ``free``: values whose last reader it is (unread outputs die at once)."""
    last_use: dict[str, int] = {}
    for k, step in enumerate(steps):
        for name in step.deps:
            last_use[name] = k
    for k, step in enumerate(steps):
        for name in step.outputs:
            if name and name not in last_use:
                last_use[name] = k
    frees: dict[int, list[str]] = {}
    for name, k in last_use.items():
        if name not in keep and (freeable is None or name in freeable):
            frees.setdefault(k, []).append(name)
    for k, step in enumerate(steps):
        step.free = tuple(frees.get(k, ()))



def strip_fns(steps: list[Step]) -> list[Step]:
    out = []
    for s in steps:
        branches = None
        if s.branches is not None:
            branches = tuple(dataclasses.replace(b, steps=strip_fns(b.steps)) for b in s.branches)
        out.append(dataclasses.replace(s, fn=None, branches=branches))  # type: ignore[arg-type]
    return out


def restore_fns(steps: list[Step]) -> None:
    for s in steps:
        s.fn = OPS[s.attrs.op_type]
        for b in s.branches or ():
            restore_fns(b.steps)

