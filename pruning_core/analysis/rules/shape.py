"""Movement ops: Reshape, Flatten, Transpose, (Un)Squeeze, Expand, Tile, Concat, Split, Slice,
Gather, DepthToSpace / SpaceToDepth. They run on the label arrays themselves, so every index map
(a channel becoming a block of columns after Flatten, heads x head_dim after Reshape, concat
offsets, pixel shuffle) is exact. Surgery rewrites their shape constants from the new shapes.
Also: Gather from a weight table (embeddings: the vocabulary axis is never pruned) and views
of parameters (Transpose(W), Unsqueeze(bias)) that other rules see through."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from pruning_core.analysis.labels import LabelCtx, NotConst
from pruning_core.analysis.rules.common import as_axis
from pruning_core.analysis.rules.registry import rule

# ------------------------------------------------------------------------------ rewrites


def _rewrite_target(sx, node: NodeProto) -> None:
    """Reshape / Expand: set the entries of the target whose output dim changed."""
    old, new = sx.old_shape(node.output[0]), sx.new_shape(node.output[0])
    if old == new:
        return
    target = np.array(sx.const(node.input[1]), dtype=np.int64).copy()
    for i, (o, n) in enumerate(zip(old, new, strict=True)):
        if o != n and target[i] != -1:
            target[i] = n
    sx.set_const_input(node, 1, target)


def _rewrite_split(sx, node: NodeProto) -> None:
    rank = len(sx.old_shape(node.input[0]))
    axis = int(sx.attr(node, "axis", 0)) % rank
    old = [sx.old_shape(o)[axis] for o in node.output]
    new = [sx.new_shape(o)[axis] for o in node.output]
    if old == new:
        return
    sizes = np.array(new, dtype=np.int64)
    if len(node.input) > 1 and node.input[1]:
        sx.set_const_input(node, 1, sizes)
    elif sx.g.opset >= 13:  # equal split (or num_outputs) becomes explicit sizes
        sx.drop_attr(node, "num_outputs")
        sx.add_const_input(node, 1, sizes, f"{node.name}__split")
    else:
        from onnx import helper

        sx.set_attr(node, helper.make_attribute("split", [int(n) for n in new]))


def _rewrite_slice(sx, node: NodeProto) -> None:
    x = node.input[0]
    old_in, new_in = sx.old_shape(x), sx.new_shape(x)
    if old_in == new_in:
        return
    rank = len(old_in)
    starts = np.array(sx.const(node.input[1]), dtype=np.int64).copy()
    ends = np.array(sx.const(node.input[2]), dtype=np.int64).copy()
    axes = (np.array(sx.const(node.input[3]), dtype=np.int64) if len(node.input) > 3 and node.input[3]
            else np.arange(len(starts)))
    steps = (np.array(sx.const(node.input[4]), dtype=np.int64) if len(node.input) > 4 and node.input[4]
             else np.ones(len(starts), dtype=np.int64))
    for i, ax in enumerate(axes % rank):
        if old_in[ax] == new_in[ax]:
            continue
        kept = sx.kept_positions(x, int(ax))  # old positions still there, ascending
        rank_of = {int(p): r for r, p in enumerate(kept)}
        picked = [p for p in range(*slice(int(starts[i]), int(ends[i]), int(steps[i])).indices(old_in[ax]))
                  if p in rank_of]
        if not picked:
            raise ValueError(f"Slice {node.name!r} would select nothing after pruning")
        new_pos = [rank_of[p] for p in picked]
        step = int(steps[i])
        if len(new_pos) > 1 and any(b - a != step for a, b in zip(new_pos, new_pos[1:], strict=False)):
            raise ValueError(f"Slice {node.name!r}: kept positions are not evenly spaced")
        starts[i] = new_pos[0]
        end = new_pos[-1] + step
        ends[i] = end if end >= 0 else np.iinfo(np.int64).min
    sx.set_const_input(node, 1, starts)
    sx.set_const_input(node, 2, ends)


def _rewrite_gather(sx, node: NodeProto) -> None:
    data = node.input[0]
    if sx.is_param_like(data):
        return
    old_in, new_in = sx.old_shape(data), sx.new_shape(data)
    axis = int(sx.attr(node, "axis", 0)) % len(old_in)
    if old_in[axis] == new_in[axis] or sx.const(node.input[1]) is None:
        return
    kept = sx.kept_positions(data, axis)
    rank_of = {int(p): r for r, p in enumerate(kept)}
    idx = np.array(sx.const(node.input[1]), dtype=np.int64)
    flat = [int(i) % old_in[axis] for i in idx.ravel()]
    new = np.array([rank_of[i] for i in flat if i in rank_of], dtype=np.int64)
    if idx.ndim == 0:
        if new.size != 1:
            raise ValueError(f"Gather {node.name!r} selects a removed channel")
        new = new.reshape(())
    elif idx.ndim != 1:
        raise ValueError(f"Gather {node.name!r}: multi-dim indices on a pruned axis")
    sx.set_const_input(node, 1, new)


# ------------------------------------------------------------------------------ views


def _view(ctx: LabelCtx, node: NodeProto) -> bool:
    """Record ``node.output[0]`` as a view of a parameter when it only permutes / adds / drops
    unit axes; returns True when the data input is a parameter (handled here)."""
    data = node.input[0]
    if not ctx.is_param(data):
        return False
    v = ctx.view(data)
    if v is None or node.output[0] in ctx.g.inits:
        return True
    init, amap = v
    op = node.op_type
    in_shape, out_shape = ctx.shape(data), ctx.shape(node.output[0])
    new: list[int | None] | None = None
    if op in ("Identity", "Cast", "Dropout"):
        new = list(amap)
    elif op == "Transpose":
        perm = ctx.attr(node, "perm", None) or list(reversed(range(len(amap))))
        new = [amap[p] for p in perm]
    elif op in ("Unsqueeze", "Squeeze", "Reshape", "Flatten"):
        # Only unit axes change: map the non-unit axes in order.
        src = [(a, amap[a]) for a, d in enumerate(in_shape) if d != 1]
        dst = [a for a, d in enumerate(out_shape) if d != 1]
        if [in_shape[a] for a, _ in src] == [out_shape[a] for a in dst]:
            new = [None] * len(out_shape)
            for (_, s), d in zip(src, dst, strict=True):
                new[d] = s
    if new is not None:
        ctx.add_view(node, tuple(new))
    return True


# ------------------------------------------------------------------------------ rules


def _movement(ctx: LabelCtx, node: NodeProto, data: set[int]) -> None:
    try:
        outs = ctx.run_on_labels(node, data)
    except NotConst as e:
        ctx.block(ctx.lab(node.input[0]), f"{node.op_type} {node.name!r} has a computed shape input {e}")
        return
    for name, arr in zip([o for o in node.output], outs, strict=False):
        if name:
            ctx.set(name, ctx.slabify(arr))


@rule("Reshape", "Expand", rewrite=_rewrite_target)
def reshape(ctx: LabelCtx, node: NodeProto) -> None:
    if _view(ctx, node) or not ctx.has_labels(node.input[0]):
        return
    _movement(ctx, node, {0})


@rule("Flatten", "Transpose", "Squeeze", "Unsqueeze", "Tile", "DepthToSpace", "SpaceToDepth")
def movement(ctx: LabelCtx, node: NodeProto) -> None:
    if _view(ctx, node) or not ctx.has_labels(node.input[0]):
        return
    _movement(ctx, node, {0})


@rule("Split", rewrite=_rewrite_split)
def split(ctx: LabelCtx, node: NodeProto) -> None:
    if ctx.is_param(node.input[0]) or not ctx.has_labels(node.input[0]):
        return
    _movement(ctx, node, {0})


@rule("Slice", rewrite=_rewrite_slice)
def slice_(ctx: LabelCtx, node: NodeProto) -> None:
    if ctx.is_param(node.input[0]) or not ctx.has_labels(node.input[0]):
        return
    _movement(ctx, node, {0})


@rule("Concat")
def concat(ctx: LabelCtx, node: NodeProto) -> None:
    ins = [n for n in node.input if n]
    if not any(ctx.has_labels(n) for n in ins):
        return
    out = node.output[0]
    rank = ctx.rank(out)
    axis = int(ctx.attr(node, "axis", 0)) % rank
    acts = [n for n in ins if not ctx.is_param(n) and ctx.has_labels(n)]
    # Channels may vary along other axes than the concat axis (tokens concatenated, hidden dim
    # shared): the inputs' labels along those axes meet in the output and are coupled; constant
    # inputs (a cls token) are sliced with them.
    for ax in range(rank):
        if ax == axis or not any(ctx.varies(n, ax) for n in acts):
            continue
        vecs = [ctx.along(n, ax, node) for n in acts if ctx.varies(n, ax)]
        for v in vecs[1:]:
            ctx.union(vecs[0], v)
        for n in ins:
            if ctx.is_param(n):
                pv = ctx.pvar(n, ax)
                if pv is None:
                    ctx.block(vecs[0], f"constant {n!r} of Concat {node.name!r} cannot be sliced")
                else:
                    ctx.union(pv, vecs[0])
    parts = []
    for n in ins:
        shp = list(ctx.shape(n))
        if ctx.is_param(n):
            lab = np.full([1] * rank, -1, dtype=np.int64)
            for ax in range(rank):
                if ax != axis and any(ctx.varies(a, ax) for a in acts):
                    lab = ctx.combine([lab, as_axis(ctx.pvar(n, ax), rank, ax)])
        else:
            lab = ctx.lab(n)
        # materialize only the concat axis
        tgt = [shp[ax] if ax == axis else lab.shape[ax] for ax in range(rank)]
        parts.append(np.broadcast_to(lab, tgt))
    ctx.set(out, ctx.uf.roots(np.concatenate(parts, axis=axis)))


@rule("Gather", rewrite=_rewrite_gather)
def gather(ctx: LabelCtx, node: NodeProto) -> None:
    data, idx = node.input[0], node.input[1]
    out = node.output[0]
    rank = ctx.rank(out)
    axis = int(ctx.attr(node, "axis", 0)) % ctx.rank(data)
    if ctx.is_param(data):
        # Embedding lookup: rows are the vocabulary (never pruned), columns produce channels.
        if axis == 0 and ctx.rank(data) == 2 and not ctx.is_param(idx):
            ctx.set(out, as_axis(ctx.producer(data, 1), rank, -1))
        elif axis == 0 and ctx.rank(data) == 2 and (v := ctx.view(data)) is not None:
            # constant rows of a table too big to fold (or kept in QDQ form): a view whose last
            # axis is the table's columns, sliced with them wherever the rows are added in
            ctx.views[out] = (v[0], (None,) * ctx.rank(idx) + (v[1][1],))
            ctx.param_uses.add((ctx.current, data))
        return
    if not ctx.has_labels(data):
        return
    if ctx.const(idx) is not None:
        _movement(ctx, node, {0})
        return
    lab = ctx.lab(data)
    if lab.shape[axis] > 1:
        ctx.block(lab, f"Gather {node.name!r} picks channels with computed indices")
        return
    kept = lab.take(0, axis=axis)
    idx_rank = ctx.rank(idx)
    ctx.set(out, np.expand_dims(kept, tuple(range(axis, axis + idx_rank))) if idx_rank else kept)


@rule("GatherElements", "ScatterND", "ScatterElements", "NonZero", "Compress", "Einsum")
def unsupported_mixing(ctx: LabelCtx, node: NodeProto) -> None:
    for n in node.input:
        if n and ctx.has_labels(n):
            ctx.block(ctx.lab(n), f"no channel rule for {node.op_type} (node {node.name!r})")


@rule("Shape", "Size", "ConstantOfShape", "EyeLike", "RandomNormalLike", "RandomUniformLike")
def no_channels(ctx: LabelCtx, node: NodeProto) -> None:
    """Outputs depend on shapes only: no channels flow through."""
