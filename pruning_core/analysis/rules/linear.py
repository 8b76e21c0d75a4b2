"""Gemm and MatMul: with a weight on either side (Linear layers), or between two activations
(attention QK^T and AV). A contraction removes a channel from both operands exactly, so
contracted channels of two activations are coupled; what is contracted away does not reach the
output. Channels that meet an unlabeled activation in a contraction cannot be removed."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from pruning_core.analysis.labels import LabelCtx
from pruning_core.analysis.rules.common import as_axis, pad_rank
from pruning_core.analysis.rules.registry import rule


def _matmul_weight(ctx: LabelCtx, node: NodeProto, *, act: str, w: str, axis: int, consumer: int,
                   consume: int, produce: int, rest_rank: int) -> None:
    """A 2-D weight on one side: the activation's ``axis`` meets the weight's ``consume`` axis, the
    weight's ``produce`` axis becomes the output's ``axis``."""
    if ctx.varies(act, axis):
        ctx.union(ctx.along(act, axis, node), ctx.pvar(w, consume))
    ctx.consumer(node, consumer)
    rank = ctx.rank(node.output[0])
    rest = _rest(ctx.lab(act), rest_rank)
    ctx.set(node.output[0], ctx.combine([pad_rank(rest, rank), as_axis(ctx.producer(w, produce), rank, axis)]))


def _rest(lab: np.ndarray, axis: int) -> np.ndarray:
    """Labels that survive contracting ``axis``: those constant along it."""
    if lab.shape[axis] > 1:
        return np.full_like(lab.take([0], axis=axis), -1)
    return lab


@rule("MatMul")
def matmul(ctx: LabelCtx, node: NodeProto) -> None:
    a, b = node.input[0], node.input[1]
    out = node.output[0]
    ra, rb, rank = ctx.rank(a), ctx.rank(b), ctx.rank(out)
    if ra < 2 or rb < 2:
        ctx.block(np.concatenate([ctx.lab(a).ravel(), ctx.lab(b).ravel()]),
                  f"MatMul {node.name!r} with a 1-D operand")
        return
    pa, pb = ctx.is_param(a), ctx.is_param(b)
    if pa and pb:
        return
    if pb and rb == 2:  # X @ W: W rows consume, W columns produce
        _matmul_weight(ctx, node, act=a, w=b, axis=-1, consumer=0, consume=0, produce=1, rest_rank=ra - 1)
        return
    if pa and ra == 2:  # W @ X: W columns consume X rows, W rows produce output rows
        _matmul_weight(ctx, node, act=b, w=a, axis=-2, consumer=1, consume=1, produce=0, rest_rank=rb - 2)
        return
    if pa or pb:
        labs = [ctx.lab(n) for n in (a, b) if not ctx.is_param(n)]
        ctx.block(labs[0], f"MatMul {node.name!r} with a batched weight")
        return
    # activation x activation: attention scores and context
    la, lb = ctx.lab(a), ctx.lab(b)
    va, vb = la.shape[-1] > 1, lb.shape[-2] > 1
    if va or vb:
        ka = ctx.along(a, -1, node) if va else None
        kb = ctx.along(b, -2, node) if vb else None
        if ka is not None and kb is not None:
            both = (ka >= 0) & (kb >= 0)
            ctx.union(ka[both], kb[both])
            ctx.block(np.concatenate([ka[(ka >= 0) & (kb < 0)], kb[(kb >= 0) & (ka < 0)]]),
                      f"channels contracted with unlabeled values at MatMul {node.name!r}")
        else:
            ctx.block(ka if ka is not None else kb,  # type: ignore[arg-type]
                      f"channels contracted with unlabeled values at MatMul {node.name!r}")
    if ctx.has_labels(a) or ctx.has_labels(b):
        ctx.consumer(node, 0)
        ctx.consumer(node, 1)
    rest_a = pad_rank(_rest(la, la.ndim - 1), rank)
    rest_b = pad_rank(_rest(lb, lb.ndim - 2), rank)
    ctx.set(out, ctx.combine([rest_a, rest_b]))


@rule("Gemm")
def gemm(ctx: LabelCtx, node: NodeProto) -> None:
    a, b = node.input[0], node.input[1]
    c = node.input[2] if len(node.input) > 2 else ""
    out = node.output[0]
    ta, tb = int(ctx.attr(node, "transA", 0)), int(ctx.attr(node, "transB", 0))
    if not ctx.is_param(b) or ctx.is_param(a):
        ctx.block(ctx.lab(a) if not ctx.is_param(a) else ctx.lab(b), f"Gemm {node.name!r} without a weight B")
        return
    k_axis_a = 0 if ta else 1
    if ctx.varies(a, k_axis_a):
        ctx.union(ctx.along(a, k_axis_a, node), ctx.pvar(b, 1 if tb else 0))
    ctx.consumer(node, 0)
    out_vars = ctx.producer(b, 0 if tb else 1)
    la = ctx.lab(a)
    rest = _rest(la, k_axis_a)
    rows = rest.reshape(1, 1) if rest.size == 1 else rest.reshape(-1, 1)
    lab = ctx.combine([rows, as_axis(out_vars, 2, 1)])
    if c and ctx.is_param(c):
        shp = ctx.shape(c)
        if shp and shp[-1] > 1:
            ctx.union(ctx.pvar(c, len(shp) - 1), out_vars)
    ctx.set(out, lab)
