"""OBSPA's consumers: every layer that reads channels, as least-squares problems over its weight.

``plan`` turns ``Analysis.consumer_inputs`` into ``Consumer`` entries (Conv, Gemm, MatMul with a
weight or a permuted view of one: weight matrix [O, K] against the unfolded input rows [n, K]) and
``Product`` entries (activation x activation MatMuls, no weight). A consumer's columns are cut into
channel-aligned ``Block``s (the groups of a grouped conv, column blocks of layers wider than
``max_cols``), and its blocks of equal shape form ``Stack``s that OBSPA accumulates, inverts,
scores and refits as batched array operations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from onnx import NodeProto

from pruning_core.analysis.groups import Analysis
from pruning_core.importance.unfold import Rows, conv_unfold, dense_unfold
from pruning_core.ir.graph import attr

MAX_COLS = 4096            # widest H built (4096^2 float64 = 128 MiB)


@dataclass
class Block:
    """One least-squares problem: output rows ``rows`` of the weight matrix against the unfolded
    input columns ``xcols`` (weight matrix columns ``wcols``); ``owner`` is each column's cid."""

    key: tuple                      # (tensor, unfold signature, columns)
    rows: np.ndarray
    xcols: np.ndarray
    wcols: np.ndarray
    owner: np.ndarray


@dataclass
class Stack:
    """A consumer's blocks of equal width and row count, solved together: ``[G, k]`` columns,
    ``[G, r]`` rows (None: every row, for each block)."""

    key: tuple                      # shared H key: (tensor, unfold signature, columns, bias)
    rows: np.ndarray | None
    xcols: np.ndarray
    wcols: np.ndarray
    owner: np.ndarray               # [G, k (+1 for the bias column: -1)]


@dataclass
class Consumer:
    node: str
    tensor: str                                # the captured input activation
    init: str                                  # weight initializer
    get: Callable[[np.ndarray], np.ndarray]    # init array -> weight matrix [O, K]
    put: Callable[[np.ndarray], np.ndarray]    # weight matrix [O, K] -> init array
    rows: Rows                                 # activation -> rows of X [n, K]
    sig: tuple                                 # the unfolding: consumers of one tensor share rows
    blocks: list[Block]
    bias: str | None = None
    stacks: list[Stack] = field(default_factory=list)


@dataclass
class Product:
    """An activation x activation MatMul contracting channels (no weight to refit)."""

    node: str
    a: str
    b: str
    owner: np.ndarray                          # cid per contracted position


@dataclass
class ConsumerPlan:
    """Every consumer of channels (``plan``): weight least-squares blocks and weightless products
    (not the plan.json of ``pruning_core.plan``)."""

    consumers: list[Consumer] = field(default_factory=list)
    products: list[Product] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ planning


def _resolve(an: Analysis, name: str) -> tuple[str, list[int]] | None:
    """(initializer, axis permutation) behind ``name``: an initializer, or a view that permutes
    one (Transpose(W), a QDQ weight's DequantizeLinear); None for anything else."""
    g = an.graph
    if name in g.inits:
        return name, list(range(g.inits[name].ndim))
    if name not in an.views:
        return None
    init, amap = an.views[name]
    perm = [a for a in amap if a is not None]
    return (init, perm) if sorted(perm) == list(range(g.inits[init].ndim)) else None


def _param(an: Analysis, name: str) -> tuple[str, Callable, Callable] | None:
    """(initializer, init -> view, view -> init) for an initializer or a permuted view of one."""
    g = an.graph
    found = _resolve(an, name)
    if found is None:
        return None
    init, perm = found
    if name == init:
        return name, (lambda a: a), (lambda v: v)
    vshape = g.shape(name)
    inv = np.argsort(perm)

    def to_view(a: np.ndarray) -> np.ndarray:
        return np.transpose(a, perm).reshape(vshape)

    def to_init(v: np.ndarray) -> np.ndarray:
        return np.transpose(v.reshape([g.inits[init].shape[p] for p in perm]), inv)

    return init, to_view, to_init


def _plain(an: Analysis, name: str) -> str | None:
    """The initializer behind ``name`` when it is that initializer's layout unchanged (itself, a
    QDQ weight's DequantizeLinear, an Identity): its values are read and refit through
    ``ir.quant`` (dequantized, then requantized)."""
    found = _resolve(an, name)
    if found is None:
        return None
    init, perm = found
    same = perm == sorted(perm) and tuple(an.graph.inits[init].shape) == tuple(an.graph.shape(name))
    return init if same else None


def _bias_of_matmul(an: Analysis, node: NodeProto, n_out: int) -> str | None:
    """The [N] initializer of the Add that follows a Linear's MatMul (exporters split Linear)."""
    users = an.graph.consumers.get(node.output[0], [])
    if len(users) != 1 or users[0][0].op_type != "Add":
        return None
    add = users[0][0]
    other = _plain(an, add.input[1 - users[0][1]])
    b = an.graph.inits.get(other) if other else None
    return other if b is not None and b.ndim == 1 and b.shape[0] == n_out else None


def _split(owner: np.ndarray, max_cols: int) -> list[np.ndarray]:
    """Channel-aligned column blocks of at most ``max_cols`` columns (a channel never splits)."""
    if len(owner) <= max_cols:
        return [np.arange(len(owner))]
    units: list[np.ndarray] = []
    seen: dict[int, int] = {}
    free: list[int] = []
    for c, o in enumerate(owner):
        if o < 0:
            free.append(c)
        elif int(o) in seen:
            units[seen[int(o)]] = np.append(units[seen[int(o)]], c)
        else:
            seen[int(o)] = len(units)
            units.append(np.array([c]))
    units += [np.array(free[i:i + max_cols]) for i in range(0, len(free), max_cols)]
    out: list[np.ndarray] = []
    cur: list[np.ndarray] = []
    size = 0
    for u in units:
        if cur and size + len(u) > max_cols:
            out.append(np.sort(np.concatenate(cur)))
            cur, size = [], 0
        cur.append(u)
        size += len(u)
    if cur:
        out.append(np.sort(np.concatenate(cur)))
    return out


def owner_along(an: Analysis, tensor: str, axis: int) -> np.ndarray | None:
    if tensor not in an.act_owner:
        return None
    ax, owner = an.act_owner[tensor]
    rank = len(an.graph.shape(tensor))
    return owner if ax % rank == axis % rank else None


def plan(an: Analysis, max_cols: int | None = None) -> ConsumerPlan:
    """Every consumer of channels, as weight least-squares blocks or weightless products."""
    g = an.graph
    max_cols = max_cols or MAX_COLS
    nodes = {n.name: n for n in g.nodes}
    out = ConsumerPlan()
    for node_name, idx, tensor in an.consumer_inputs:
        node = nodes[node_name]
        op = node.op_type
        if op == "MatMul" and not any(n in g.inits or n in an.views for n in node.input[:2]):
            if idx == 0:
                own = owner_along(an, node.input[0], -1)
                if own is not None:
                    out.products.append(Product(node_name, node.input[0], node.input[1], own))
            continue
        c = _consumer(an, node, idx, tensor, max_cols)
        if c is None:
            out.skipped.append(node_name)
        else:
            c.stacks = _stacks(c)
            out.consumers.append(c)
    return out


def _consumer(an: Analysis, node: NodeProto, idx: int, tensor: str, max_cols: int) -> Consumer | None:
    g = an.graph
    op = node.op_type
    x_shape = g.shape(tensor)
    bias = None
    if op == "Conv" and idx == 0 and (init := _plain(an, node.input[1])) is not None:
        w_shape = g.inits[init].shape
        own = owner_along(an, tensor, 1)
        uf = conv_unfold(node, x_shape, w_shape)
        if own is None or uf is None:
            return None
        rows, sig = uf
        k = int(np.prod(w_shape[2:]))
        groups = int(attr(node, "group", 1))
        cg, og = w_shape[1], w_shape[0] // groups

        def get(a: np.ndarray) -> np.ndarray:
            return a.reshape(a.shape[0], -1)

        def put(m: np.ndarray, shape: tuple[int, ...] = tuple(w_shape)) -> np.ndarray:
            return m.reshape(shape)

        col_owner = np.repeat(own, k)
        blocks = []
        for gi in range(groups):
            xc = np.arange(gi * cg * k, (gi + 1) * cg * k)
            blocks += _blocks(tensor, sig, np.arange(gi * og, (gi + 1) * og), xc,
                              np.arange(cg * k), col_owner[xc], max_cols)
        if len(node.input) > 2 and node.input[2]:
            bias = _plain(an, node.input[2])
        return Consumer(node.name, tensor, init, get, put, rows, sig, blocks, bias)
    if op == "Gemm" and idx == 0:
        p = _param(an, node.input[1])
        if p is None:
            return None
        init, to_view, to_init = p
        axis = 0 if attr(node, "transA", 0) else 1
        tb = int(attr(node, "transB", 0))
        own = owner_along(an, tensor, axis)
        if own is None:
            return None

        def get(a: np.ndarray) -> np.ndarray:
            v = to_view(a)
            return v if tb else v.T

        def put(m: np.ndarray) -> np.ndarray:
            return to_init(m if tb else m.T)

        n_out = g.shape(node.input[1])[0 if tb else 1]
        b = _plain(an, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if b is not None and g.inits[b].size == n_out and g.inits[b].ndim == 1:
            bias = b
        key = ("dense", axis)
    elif op == "MatMul":
        p = _param(an, node.input[1 - idx])
        if p is None or len(g.shape(node.input[1 - idx])) != 2:
            return None
        init, to_view, to_init = p
        axis = len(x_shape) - 1 if idx == 0 else len(x_shape) - 2
        own = owner_along(an, tensor, axis)
        if own is None:
            return None
        if idx == 0:  # X @ W, W [K, N]
            def get(a: np.ndarray) -> np.ndarray:
                return to_view(a).T

            def put(m: np.ndarray) -> np.ndarray:
                return to_init(m.T)

            bias = _bias_of_matmul(an, node, g.shape(node.input[1])[1])
        else:  # W @ X, W [M, K]: already [O, K]
            def get(a: np.ndarray) -> np.ndarray:
                return to_view(a)

            put = to_init
        key = ("dense", axis)
    else:
        return None
    blocks = _blocks(tensor, key, None, np.arange(len(own)), np.arange(len(own)), own, max_cols)
    return Consumer(node.name, tensor, init, get, put, dense_unfold(axis), key, blocks, bias)


def _blocks(tensor: str, sig: tuple, rows: np.ndarray | None, xcols: np.ndarray, wcols: np.ndarray,
            owner: np.ndarray, max_cols: int) -> list[Block]:
    out = []
    for part in _split(owner, max_cols):
        key = (tensor, sig, xcols[part].tobytes())
        out.append(Block(key, rows if rows is not None else np.zeros(0, np.int64), xcols[part], wcols[part],
                         owner[part]))
    return out


def _stacks(c: Consumer) -> list[Stack]:
    """The consumer's blocks grouped by (width, rows): one batched problem per group."""
    by: dict[tuple[int, int], list[Block]] = {}
    for b in c.blocks:
        by.setdefault((len(b.xcols), len(b.rows)), []).append(b)
    out = []
    for (_, nrows), bs in by.items():
        xcols = np.stack([b.xcols for b in bs])
        owner = np.stack([b.owner for b in bs])
        if c.bias is not None:
            owner = np.concatenate([owner, np.full((len(bs), 1), -1, owner.dtype)], axis=1)
        key = (c.tensor, c.sig, xcols.tobytes(), c.bias is not None)
        out.append(Stack(key, np.stack([b.rows for b in bs]) if nrows else None, xcols,
                         np.stack([b.wcols for b in bs]), owner))
    return out
