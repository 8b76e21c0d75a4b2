"""Channel labels: the mechanism behind dependency analysis.

Every activation tensor carries an int64 *label array* (-1 = no channel) in compact form: a
dimension of size 1 where labels do not vary along it, broadcastable to the tensor's shape. Every
parameter axis that touches channels carries a vector of union-find variables (``pvar``).
Op rules (``pruning_core.analysis.rules``) union variables that must be pruned together and compute output
labels; movement ops (Reshape, Transpose, Concat, Split, Slice, Gather, DepthToSpace, ...) simply
run on the label arrays, which gives exact index maps without per-op mapping code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import NodeProto

from pruning_core.ir.graph import Graph, attr, run_node


class UnionFind:
    """Union-find over int64 variable ids, numpy-backed: unions and root lookups are batched
    (hundreds of thousands of channel positions in a ViT-B), never a Python loop per pair."""

    def __init__(self) -> None:
        self._parent = np.zeros(1024, dtype=np.int64)
        self.size = 0

    @property
    def parent(self) -> np.ndarray:
        return self._parent[: self.size]

    def new(self, n: int) -> np.ndarray:
        start = self.size
        if start + n > len(self._parent):
            grown = np.zeros(max(2 * len(self._parent), start + n), dtype=np.int64)
            grown[:start] = self._parent[:start]
            self._parent = grown
        ids = np.arange(start, start + n, dtype=np.int64)
        self._parent[start:start + n] = ids
        self.size = start + n
        return ids

    def find_many(self, x: np.ndarray) -> np.ndarray:
        p = self._parent
        r = p[x]
        path = []
        while True:
            nxt = p[r]
            if np.array_equal(nxt, r):
                break
            path.append(r)
            r = nxt
        for ids in path:  # full path compression: residual chains get long otherwise
            p[ids] = r
        p[x] = r
        return r

    def union_many(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union a[i] with b[i] for all i. The smaller id becomes the root (deterministic)."""
        a = np.asarray(a, dtype=np.int64).ravel()
        b = np.asarray(b, dtype=np.int64).ravel()
        while a.size:
            ra, rb = self.find_many(a), self.find_many(b)
            diff = ra != rb
            if not diff.any():
                return
            a, b, ra, rb = a[diff], b[diff], ra[diff], rb[diff]
            lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
            # duplicate `hi` entries: one write wins; the loop re-checks the others
            self._parent[hi] = lo

    def all_roots(self) -> np.ndarray:
        return self.find_many(np.arange(self.size, dtype=np.int64)) if self.size else np.zeros(0, np.int64)

    def roots(self, arr: np.ndarray) -> np.ndarray:
        """Map var ids to their current roots (-1 stays -1)."""
        arr = np.asarray(arr, dtype=np.int64)
        if arr.size == 0:
            return arr
        out = arr.copy()
        m = arr >= 0
        out[m] = self.find_many(arr[m])
        return out


def compact(arr: np.ndarray) -> np.ndarray:
    """Shrink every axis along which the array is constant to size 1."""
    a = np.asarray(arr, dtype=np.int64)
    for ax in range(a.ndim):
        if a.shape[ax] > 1:
            first = a.take([0], axis=ax)
            if np.array_equal(np.broadcast_to(first, a.shape), a):
                a = first
    return np.ascontiguousarray(a)


def none_labels(rank: int) -> np.ndarray:
    return np.full((1,) * rank, -1, dtype=np.int64)


@dataclass
class Mark:
    """Labels (var ids) that must not be pruned (block) or only approximately (approx)."""

    vars: np.ndarray
    reason: str


@dataclass
class LabelCtx:
    g: Graph
    attention_heads: str = "auto"
    uf: UnionFind = field(default_factory=UnionFind)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    pvars: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    producers: set[tuple[str, int]] = field(default_factory=set)
    views: dict[str, tuple[str, tuple[int | None, ...]]] = field(default_factory=dict)
    blocks: list[Mark] = field(default_factory=list)
    approx: list[Mark] = field(default_factory=list)
    consumer_inputs: list[tuple[str, int, str]] = field(default_factory=list)  # node, input idx, tensor
    current: str = ""                                       # node whose rule runs now
    param_uses: set[tuple[str, str]] = field(default_factory=set)  # (node, tensor) sliced knowingly
    # (initializer, axis) whose removed positions the masked original zeroes: the gate rows of a
    # recurrent op, whose hidden state never passes through a tensor a mask could zero
    zeroed: list[tuple[str, int]] = field(default_factory=list)

    # ---------------------------------------------------------------- tensors

    def is_param(self, name: str) -> bool:
        """A constant operand: an initializer or a view of one (Transpose(W), Unsqueeze(b))."""
        return name in self.g.inits or name in self.views

    def shape(self, name: str) -> tuple[int, ...]:
        return self.g.shape(name)

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def lab(self, name: str) -> np.ndarray:
        """Compact labels of an activation (all -1 when it carries no channels)."""
        if name in self.labels:
            return self.labels[name]
        return none_labels(self.rank(name))

    def has_labels(self, name: str) -> bool:
        return bool(name) and name in self.labels and bool((self.labels[name] >= 0).any())

    def full(self, name: str) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(self.lab(name), self.shape(name)))

    def set(self, name: str, arr: np.ndarray) -> None:
        if not name:
            return
        a = compact(arr)
        if (a >= 0).any():
            self.labels[name] = a
        else:
            self.labels.pop(name, None)

    def const(self, name: str) -> np.ndarray | None:
        return self.g.inits.get(name) if name else None

    # ---------------------------------------------------------------- params

    def add_view(self, node: NodeProto, amap: tuple[int | None, ...] | None = None) -> None:
        """``node.output[0]`` is its parameter input seen through a permutation / unit axes."""
        v = self.view(node.input[0])
        if v is not None:
            self.views[node.output[0]] = (v[0], tuple(v[1]) if amap is None else amap)
            self.param_uses.add((self.current, node.input[0]))

    def view(self, name: str) -> tuple[str, tuple[int | None, ...]] | None:
        """A parameter seen through Transpose / Unsqueeze / Reshape-by-ones: (init, axis map)."""
        if name in self.views:
            return self.views[name]
        if name in self.g.inits:
            return name, tuple(range(self.g.inits[name].ndim))
        return None

    def pvar(self, name: str, axis: int) -> np.ndarray | None:
        """Union-find variables for the indices of parameter ``name`` along ``axis``."""
        v = self.view(name)
        if v is None:
            return None
        init, amap = v
        self.param_uses.add((self.current, name))
        axis = axis % len(amap)
        src = amap[axis]
        if src is None:
            return None
        key = (init, src)
        if key not in self.pvars:
            self.pvars[key] = self.uf.new(self.g.inits[init].shape[src])
        return self.pvars[key]

    def producer(self, name: str, axis: int) -> np.ndarray | None:
        """Like pvar, and marks the place as producing channels (a group is born here)."""
        v = self.pvar(name, axis)
        if v is not None:
            init, amap = self.view(name)  # type: ignore[misc]
            self.producers.add((init, amap[axis % len(amap)]))  # type: ignore[arg-type]
        return v

    # ---------------------------------------------------------------- unions

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union label arrays elementwise (broadcasting); -1 on either side is skipped."""
        a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        m = (a >= 0) & (b >= 0) & (a != b)
        if m.any():
            self.uf.union_many(a[m], b[m])

    def combine(self, arrs: list[np.ndarray], shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Labels of an output fed by several labeled inputs: union where they overlap."""
        arrs = [a for a in arrs if a is not None]
        if not arrs:
            return none_labels(len(shape or ()))
        out = arrs[0]
        for b in arrs[1:]:
            self.union(out, b)
            out = np.where(out >= 0, out, b)
        return compact(out)

    def slab_union(self, arr: np.ndarray, axis: int) -> np.ndarray:
        """Make every slice along ``axis`` one channel: union all labels in each slice."""
        arr = np.asarray(arr)
        moved = np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)
        # every labeled entry of a row joins the row's first labeled entry
        has = moved >= 0
        first = np.where(has.any(axis=1), moved[np.arange(len(moved)), has.argmax(axis=1)], -1)
        anchor = np.broadcast_to(first[:, None], moved.shape)
        m = has & (anchor >= 0)
        if m.any():
            self.uf.union_many(moved[m], anchor[m])
        return compact(self.uf.roots(arr))

    def slabify(self, arr: np.ndarray) -> np.ndarray:
        """Labels that vary along several axes (a reshape split into heads, pixel shuffle) are
        merged so they vary along one: the outermost for whole heads / whole groups ("auto",
        "heads"), the innermost for per-dimension pruning ("dims")."""
        # compact first: a movement op's output is full size, its distinct labels are few
        arr = compact(self.uf.roots(compact(np.asarray(arr))))
        while True:
            varying = [ax for ax in range(arr.ndim) if arr.shape[ax] > 1]
            if len(varying) <= 1:
                return arr
            keep = varying[-1] if self.attention_heads == "dims" else varying[0]
            arr = self.slab_union(arr, keep)

    def along(self, name: str, axis: int, node: NodeProto) -> np.ndarray:
        """Label vector of ``name`` along ``axis`` (len = dim). Labels varying on other axes too
        cannot be coupled to a parameter axis: they are blocked."""
        return self.along_arr(self.lab(name), axis, self.shape(name)[axis], node)

    def along_arr(self, lab: np.ndarray, axis: int, n: int, node: NodeProto) -> np.ndarray:
        axis = axis % lab.ndim
        others = [ax for ax in range(lab.ndim) if ax != axis and lab.shape[ax] > 1]
        if others and lab.shape[axis] > 1:
            self.block(lab, f"channels vary over several axes at {node.op_type} node {node.name!r}")
            return np.full(n, -1, dtype=np.int64)
        idx = tuple(slice(None) if ax == axis else 0 for ax in range(lab.ndim))
        return np.ascontiguousarray(np.broadcast_to(lab[idx], (n,)))

    def varies(self, name: str, axis: int) -> bool:
        lab = self.lab(name)
        return lab.shape[axis % lab.ndim] > 1

    def block(self, arr: np.ndarray, reason: str) -> None:
        vals = np.unique(np.asarray(arr))
        vals = vals[vals >= 0]
        if vals.size:
            self.blocks.append(Mark(vals, reason))

    def mark_approx(self, arr: np.ndarray, reason: str) -> None:
        vals = np.unique(np.asarray(arr))
        vals = vals[vals >= 0]
        if vals.size:
            self.approx.append(Mark(vals, reason))

    def zero_rows(self, places: list[tuple[str, int]]) -> None:
        """Verification zeroes the removed positions of these parameter axes (views resolved)."""
        for name, axis in places:
            v = self.view(name)
            if v is not None and v[1][axis % len(v[1])] is not None:
                self.zeroed.append((v[0], v[1][axis % len(v[1])]))  # type: ignore[arg-type]

    def consumer(self, node: NodeProto, index: int) -> None:
        """Verification masks this input of ``node`` (removed channels zeroed before it)."""
        name = node.input[index]
        if self.has_labels(name):
            self.consumer_inputs.append((node.name, index, name))

    # ---------------------------------------------------------------- helpers for rules

    def run_on_labels(self, node: NodeProto, data_inputs: set[int]) -> list[np.ndarray]:
        """Run a movement op on the label arrays of its data inputs (others must be constants)."""
        feeds: list[np.ndarray | None] = []
        for i, name in enumerate(node.input):
            if not name:
                feeds.append(None)
            elif i in data_inputs:
                feeds.append(self.full(name) if name not in self.g.inits else
                             np.full(self.shape(name), -1, dtype=np.int64))
            else:
                c = self.const(name)
                if c is None:
                    raise NotConst(name)
                feeds.append(c)
        return run_node(node, feeds, self.g.opset)

    def attr(self, node: NodeProto, name: str, default):
        return attr(node, name, default)


class NotConst(Exception):
    """A movement op's shape / index input is not a constant."""
