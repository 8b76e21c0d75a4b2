"""Dependency analysis: coupled channel groups of a graph.

``analyze(graph)`` runs every node's rule (``pruning_core.analysis.rules``) over the channel labels, then
resolves them into groups. A *channel* is a union-find class that contains at least one producer
place (output rows of a Conv / Gemm / MatMul weight, an embedding's columns). A *group* is the set
of channels that touch the same parameter places; each place says which indices along which
axis of which initializer every channel owns. Channels are numbered globally (``cid``);
``Analysis.shape_after`` gives every tensor's shape once a set of channels is removed, which is
what selection (targets), surgery (new shapes) and verification (masks) all build on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import NodeProto

from pruning_core.analysis.labels import LabelCtx, NotConst, compact
from pruning_core.analysis.rules import RULES
from pruning_core.errors import describe
from pruning_core.ir.check import implicit_inputs
from pruning_core.ir.graph import Graph


@dataclass
class Place:
    tensor: str             # initializer name
    axis: int
    index: np.ndarray       # [n_channels, k]: channel i owns index[i] along axis
    producer: bool          # output rows of a weight (where the group is born)

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "axis": self.axis, "block": int(self.index.shape[1]),
                "producer": self.producer}


@dataclass
class Group:
    id: int
    channels: np.ndarray            # global channel ids, in order
    places: list[Place]
    removable: np.ndarray           # per channel: may it be removed at all
    reasons: list[str]              # why channels are not removable
    exact: bool = True              # False: removal changes normalization statistics
    approx_reasons: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(len(self.channels))

    @property
    def prunable(self) -> bool:
        return bool(self.removable.any())

    @property
    def name(self) -> str:
        prod = [p for p in self.places if p.producer]
        return (prod or self.places)[0].tensor

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "size": self.size, "prunable": self.prunable,
                "removable": int(self.removable.sum()), "exact": self.exact,
                "reasons": self.reasons, "approx_reasons": self.approx_reasons,
                "places": [p.to_dict() for p in self.places]}


@dataclass
class Analysis:
    graph: Graph
    groups: list[Group]
    n_channels: int
    act_owner: dict[str, tuple[int, np.ndarray]]          # tensor -> (axis, cid per position | -1)
    param_owner: dict[str, list[tuple[int, np.ndarray]]]  # initializer -> [(axis, cid per index)]
    views: dict[str, tuple[str, tuple[int | None, ...]]]
    consumer_inputs: list[tuple[str, int, str]]
    group_of: np.ndarray                                  # cid -> group id
    zeroed: list[tuple[str, int]] = field(default_factory=list)  # LabelCtx.zeroed: masked by weight

    # ------------------------------------------------------------------ shapes after pruning

    def shape_after(self, name: str, removed: np.ndarray) -> tuple[int, ...]:
        """Shape of tensor ``name`` once the channels with ``removed[cid]`` are gone."""
        g = self.graph
        shape = list(g.shape(name))
        if name in self.act_owner:
            ax, owner = self.act_owner[name]
            shape[ax] = _kept_count(owner, removed)
        elif name in self.param_owner:
            for ax, owner in self.param_owner[name]:
                shape[ax] = _kept_count(owner, removed)
        elif name in self.views:
            init, amap = self.views[name]
            base = self.shape_after(init, removed)
            for ax, src in enumerate(amap):
                if src is not None:
                    shape[ax] = base[src]
        return tuple(shape)

    def kept_positions(self, name: str, axis: int, removed: np.ndarray) -> np.ndarray:
        if name in self.act_owner and self.act_owner[name][0] == axis:
            owner = self.act_owner[name][1]
            return np.nonzero((owner < 0) | ~removed[np.maximum(owner, 0)])[0]
        for ax, owner in self.param_owner.get(name, []):
            if ax == axis:
                return np.nonzero((owner < 0) | ~removed[np.maximum(owner, 0)])[0]
        return np.arange(self.graph.shape(name)[axis])

    def mask(self, name: str, removed: np.ndarray) -> np.ndarray | None:
        """0/1 float mask (broadcastable to the tensor) zeroing removed channels, or None."""
        if name not in self.act_owner:
            return None
        ax, owner = self.act_owner[name]
        keep = ((owner < 0) | ~removed[np.maximum(owner, 0)]).astype(np.float32)
        if keep.all():
            return None
        rank = len(self.graph.shape(name))
        return keep.reshape(tuple(len(owner) if a == ax else 1 for a in range(rank)))

    # ------------------------------------------------------------------ costs

    def params(self, removed: np.ndarray | None = None) -> int:
        from pruning_core.runtime.metrics import is_weight

        removed = self._removed(removed)
        return int(sum(np.prod(self.shape_after(n, removed)) for n, a in self.graph.inits.items()
                       if is_weight(self.graph, n, a)))

    def macs(self, removed: np.ndarray | None = None) -> int:
        from pruning_core.runtime.metrics import node_macs

        removed = self._removed(removed)
        return int(sum(node_macs(n, lambda t: self.shape_after(t, removed)) for n in self.graph.nodes))

    def _removed(self, removed: np.ndarray | None) -> np.ndarray:
        return np.zeros(self.n_channels, dtype=bool) if removed is None else removed

    def summary(self) -> dict:
        return {"groups_total": len(self.groups),
                "groups_prunable": sum(g.prunable for g in self.groups),
                "channels_total": int(self.n_channels),
                "channels_removable": int(sum(int(g.removable.sum()) for g in self.groups))}


def _kept_count(owner: np.ndarray, removed: np.ndarray) -> int:
    if owner.size == 0:
        return 0
    return int(((owner < 0) | ~removed[np.maximum(owner, 0)]).sum())


# ---------------------------------------------------------------------------------- analysis


def propagate(g: Graph, attention_heads: str = "auto") -> LabelCtx:
    ctx = LabelCtx(g, attention_heads=attention_heads)
    for node in g.model.graph.node:
        ctx.current = node.name
        _apply(ctx, node)
    for out in g.outputs:
        ctx.block(ctx.lab(out), f"reaches graph output {out!r}")
    _block_unaccounted_param_uses(ctx)
    return ctx


def _block_unaccounted_param_uses(ctx: LabelCtx) -> None:
    """A parameter that will be sliced must be sliced knowingly by every node that reads it
    (directly or through a view); any other reader would see a shape it does not expect."""
    g = ctx.g
    sliced: dict[str, list[np.ndarray]] = {}
    for (init, _ax), v in ctx.pvars.items():
        sliced.setdefault(init, []).append(v)
    readers: dict[str, list[str]] = {init: [init] for init in sliced}
    for view, (init, _) in ctx.views.items():
        if init in readers:
            readers[init].append(view)
    for init, names in readers.items():
        for name in names:
            for node, _ in g.consumers.get(name, []):
                if (node.name, name) not in ctx.param_uses:
                    for v in sliced[init]:
                        ctx.block(v, f"parameter {init!r} is also read by {node.op_type} {node.name!r}")


def _apply(ctx: LabelCtx, node: NodeProto) -> None:
    labeled = [n for n in node.input if n and ctx.has_labels(n)]
    for name in implicit_inputs(node):  # read inside an If / Loop / Scan body: its channels stay
        why = f"{node.op_type} {node.name!r} reads {name!r} inside a subgraph"
        if ctx.has_labels(name):
            ctx.block(ctx.lab(name), why)
        elif ctx.is_param(name):
            for ax in range(ctx.rank(name)):
                v = ctx.pvar(name, ax)
                if v is not None:
                    ctx.block(v, why)
    rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if rule is None:
        for n in labeled:
            ctx.block(ctx.lab(n), f"no channel rule for op {node.op_type} (node {node.name!r})")
        return
    try:
        rule.labels(ctx, node)
    except NotConst as e:
        for n in labeled:
            ctx.block(ctx.lab(n), f"{node.op_type} {node.name!r}: input {e} is not constant")
    except Exception as e:  # a rule that cannot handle this instance must not guess
        for n in labeled:
            ctx.block(ctx.lab(n), f"{node.op_type} {node.name!r}: the channel rule cannot follow it ({describe(e)})")
        for o in node.output:
            ctx.labels.pop(o, None)


def analyze(g: Graph, attention_heads: str = "auto", approximate: bool = False) -> Analysis:
    ctx = propagate(g, attention_heads)
    uf = ctx.uf
    n_vars = uf.size
    root = uf.all_roots() if n_vars else np.zeros(0, np.int64)

    def roots(a: np.ndarray) -> np.ndarray:
        return np.where(a >= 0, root[np.maximum(a, 0)], -1)

    reasons_list: list[str] = []
    blocked_at = np.full(max(n_vars, 1), -1, dtype=np.int64)  # root -> index into reasons_list

    def mark(arr: np.ndarray, target: np.ndarray, reason: str) -> None:
        r = np.unique(root[arr]) if arr.size else arr
        r = r[target[r] < 0]  # the first reason recorded for a channel wins
        if r.size:
            reasons_list.append(reason)
            target[r] = len(reasons_list) - 1

    for m in ctx.blocks:
        mark(m.vars, blocked_at, m.reason)
    approx_at = np.full(max(n_vars, 1), -1, dtype=np.int64)
    for m in ctx.approx:
        mark(m.vars, approx_at, m.reason)

    is_channel = np.zeros(max(n_vars, 1), dtype=bool)
    for key in ctx.producers:
        is_channel[root[ctx.pvars[key]]] = True

    # Activation tensors: every channel must own whole slices along one axis.
    act_axis: dict[str, tuple[int, np.ndarray]] = {}
    for name, lab in ctx.labels.items():
        if name not in g.shapes:
            continue
        r = compact(roots(lab))
        varying = [ax for ax in range(r.ndim) if r.shape[ax] > 1]
        vals = np.unique(r[r >= 0])
        if not vals.size:
            continue
        if len(varying) == 0:
            mark(vals[:1], blocked_at, f"channel fills the whole tensor {name!r}")
            continue
        if len(varying) > 1:
            mark(vals, blocked_at, f"channels vary over several axes of tensor {name!r}")
            continue
        ax = varying[0]
        rows = np.moveaxis(np.broadcast_to(r, r.shape), ax, 0).reshape(r.shape[ax], -1)
        owner = rows[:, 0].copy()
        mixed = ~(rows == rows[:, :1]).all(axis=1)
        if mixed.any():
            bad = np.unique(rows[mixed])
            mark(bad[bad >= 0], blocked_at, f"channels share positions in tensor {name!r}")
            owner[mixed] = -2  # positions that cannot move
        act_axis[name] = (ax, owner)

    # Group channels by the parameter places they touch: (place, count) sequences per root.
    place_owner: dict[tuple[str, int], np.ndarray] = {k: root[v] for k, v in ctx.pvars.items()}
    place_keys = sorted(place_owner)
    rows_r, rows_p, rows_c = [], [], []
    for i, key in enumerate(place_keys):
        vals, counts = np.unique(place_owner[key], return_counts=True)
        keep = is_channel[vals]
        rows_r.append(vals[keep])
        rows_p.append(np.full(int(keep.sum()), i, dtype=np.int64))
        rows_c.append(counts[keep])
    rr = np.concatenate(rows_r) if rows_r else np.zeros(0, np.int64)
    pp = np.concatenate(rows_p) if rows_p else np.zeros(0, np.int64)
    cc = np.concatenate(rows_c) if rows_c else np.zeros(0, np.int64)
    order = np.lexsort((pp, rr))
    rr, pp, cc = rr[order], pp[order], cc[order]
    bounds = np.flatnonzero(np.diff(rr)) + 1
    starts = np.concatenate([[0], bounds]) if rr.size else np.zeros(0, np.int64)
    ends = np.concatenate([bounds, [rr.size]]) if rr.size else np.zeros(0, np.int64)
    pc = np.stack([pp, cc], axis=1) if rr.size else np.zeros((0, 2), np.int64)
    by_sig: dict[bytes, list[int]] = {}
    sig_of: dict[bytes, tuple] = {}
    for st, en in zip(starts.tolist(), ends.tolist(), strict=True):
        k = pc[st:en].tobytes()
        if k not in by_sig:
            by_sig[k] = []
            sig_of[k] = tuple((*place_keys[p], int(c)) for p, c in pc[st:en].tolist())
        by_sig[k].append(int(rr[st]))

    groups: list[Group] = []
    cid_of: dict[int, int] = {}
    next_cid = 0
    for skey, members in by_sig.items():
        sig = sig_of[skey]
        first_prod = next(((i, a) for i, a, _ in sig if (i, a) in ctx.producers), (sig[0][0], sig[0][1]))
        pos = place_owner[first_prod]
        first_at = {int(v): i for i, v in reversed(list(enumerate(pos.tolist())))}
        members.sort(key=lambda r: first_at.get(r, 0))
        cids = np.arange(next_cid, next_cid + len(members))
        for r, c in zip(members, cids, strict=True):
            cid_of[r] = int(c)
        next_cid += len(members)
        places = []
        member_arr = np.asarray(members, dtype=np.int64)
        for init, ax, k in sig:
            owner = place_owner[(init, ax)]
            order = np.argsort(owner, kind="stable")  # positions grouped by channel, ascending
            starts = np.searchsorted(owner[order], member_arr)
            idx = order[starts[:, None] + np.arange(k)[None, :]]
            places.append(Place(init, ax, idx, (init, ax) in ctx.producers))
        b_idx, a_idx = blocked_at[member_arr], approx_at[member_arr]
        removable = b_idx < 0
        reasons = sorted({reasons_list[i] for i in np.unique(b_idx[b_idx >= 0]).tolist()})
        approx_reasons = sorted({reasons_list[i] for i in np.unique(a_idx[a_idx >= 0]).tolist()})
        exact = not approx_reasons
        if not exact and not approximate:
            removable = removable & (a_idx < 0)
            reasons = sorted(set(reasons) | {f"{a} (approximate; allow with approximate=true)"
                                             for a in approx_reasons})
        groups.append(Group(len(groups), cids, places, removable, reasons, exact, approx_reasons))

    cid_lookup = np.full(max(n_vars, 1), -1, dtype=np.int64)
    for r, c in cid_of.items():
        cid_lookup[r] = c

    def to_cid(owner: np.ndarray) -> np.ndarray:
        return np.where(owner >= 0, cid_lookup[np.maximum(owner, 0)], -1)

    param_owner: dict[str, list[tuple[int, np.ndarray]]] = {}
    for (init, ax), owner in place_owner.items():
        cids = to_cid(owner)
        if (cids >= 0).any():
            param_owner.setdefault(init, []).append((ax, cids))
    act_owner = {}
    for name, (ax, owner) in act_axis.items():
        cids = to_cid(owner)
        if (cids >= 0).any():
            act_owner[name] = (ax, cids)
    group_of = np.zeros(next_cid, dtype=np.int64)
    for grp in groups:
        group_of[grp.channels] = grp.id
    return Analysis(g, groups, next_cid, act_owner, param_owner, dict(ctx.views), ctx.consumer_inputs,
                    group_of, list(dict.fromkeys(ctx.zeroed)))
