"""Normalization layers. BatchNorm / InstanceNorm: per-channel parameters, statistics per
channel (exact). GroupNorm: channels of one norm group are pruned together (exact, num_groups
shrinks). LayerNorm / RMSNorm over the channel axis: statistics change when channels go, so those
channels are approximate (pruned only when the spec allows it)."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper

from pruning_core.analysis.labels import LabelCtx
from pruning_core.analysis.rules.registry import rule


@rule("BatchNormalization")
def batch_norm(ctx: LabelCtx, node: NodeProto) -> None:
    x = node.input[0]
    if not ctx.has_labels(x):
        return
    xl = ctx.along(x, 1, node)
    for p in node.input[1:5]:
        if p and ctx.is_param(p):
            ctx.union(ctx.pvar(p, 0), xl)
    ctx.set(node.output[0], ctx.lab(x))


@rule("InstanceNormalization")
def instance_norm(ctx: LabelCtx, node: NodeProto) -> None:
    x = node.input[0]
    if not ctx.has_labels(x):
        return
    lab = ctx.lab(x)
    if any(lab.shape[ax] > 1 for ax in range(2, lab.ndim)):
        ctx.block(lab, f"InstanceNormalization {node.name!r} normalizes over channel positions")
    xl = ctx.along(x, 1, node)
    for p in node.input[1:3]:
        if p and ctx.is_param(p):
            ctx.union(ctx.pvar(p, 0), xl)
    ctx.set(node.output[0], lab)


def _rewrite_groups(sx, node: NodeProto) -> None:
    groups = int(sx.attr(node, "num_groups", 1))
    old_c, new_c = sx.old_shape(node.input[0])[1], sx.new_shape(node.input[0])[1]
    if old_c != new_c:
        sx.set_attr(node, helper.make_attribute("num_groups", int(new_c // (old_c // groups))))


@rule("GroupNormalization", rewrite=_rewrite_groups)
def group_norm(ctx: LabelCtx, node: NodeProto) -> None:
    x = node.input[0]
    if not ctx.has_labels(x):
        return
    groups = int(ctx.attr(node, "num_groups", 1))
    c = ctx.shape(x)[1]
    cg = c // groups
    xl = ctx.along(x, 1, node)
    for k in range(groups):  # one norm group = one channel: its statistics stay exact
        ctx.union(xl[k * cg:(k + 1) * cg], np.full(cg, xl[k * cg]))
    for p in node.input[1:3]:
        if p and ctx.is_param(p):
            n = ctx.shape(p)[0]
            ctx.union(ctx.pvar(p, 0), xl if n == c else xl[::cg])
    ctx.set(node.output[0], ctx.uf.roots(ctx.lab(x)))


@rule("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")
def layer_norm(ctx: LabelCtx, node: NodeProto) -> None:
    x = node.input[0]
    if not ctx.has_labels(x):
        return
    lab = ctx.lab(x)
    rank = lab.ndim
    axis = int(ctx.attr(node, "axis", -1)) % rank
    for ax in range(axis, rank):
        if lab.shape[ax] > 1:
            ctx.mark_approx(lab, f"{node.op_type} {node.name!r} normalizes over the channel axis")
            size = ctx.shape(x)[ax]
            vec = ctx.along(x, ax, node)
            for p in node.input[1:3]:
                if p and ctx.is_param(p):
                    pshape = ctx.shape(p)
                    pax = ax - (rank - len(pshape))
                    if 0 <= pax < len(pshape) and pshape[pax] == size:
                        ctx.union(ctx.pvar(p, pax), vec)
    ctx.consumer(node, 0)
    ctx.set(node.output[0], lab)  # outputs 1, 2 (mean, inv std) are statistics: no channels


@rule("LpNormalization", "LRN", "MeanVarianceNormalization")
def cross_channel_norm(ctx: LabelCtx, node: NodeProto) -> None:
    x = node.input[0]
    lab = ctx.lab(x)
    ctx.block(lab, f"{node.op_type} {node.name!r} mixes channels")
    ctx.set(node.output[0], np.full_like(lab, -1))
