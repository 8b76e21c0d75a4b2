"""Conv (plain, grouped, depthwise) and ConvTranspose.

Producers: output channels (Conv weight axis 0, ConvTranspose weight axis 1) start groups.
Consumers: input channels (Conv weight axis 1, ConvTranspose weight axis 0).
Grouped conv prunes the same in-group index from every group (the group count stays);
depthwise-like conv (one input channel per group) couples each input channel with its outputs
and the group count follows the kept channels.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper

from pruning_core.analysis.labels import LabelCtx, none_labels
from pruning_core.analysis.rules.common import as_axis
from pruning_core.analysis.rules.registry import rule


def _rewrite_group(sx, node: NodeProto) -> None:
    group = int(sx.attr(node, "group", 1))
    if group == 1:
        return
    old_c = sx.old_shape(node.input[0])[1]
    new_c = sx.new_shape(node.input[0])[1]
    w_in = sx.old_shape(node.input[1])[1 if node.op_type == "Conv" else 0]
    depthwise = (w_in == 1) if node.op_type == "Conv" else (w_in == old_c // group)
    if depthwise and new_c != old_c:
        new_group = group * new_c // old_c
        sx.set_attr(node, helper.make_attribute("group", int(new_group)))


def _io(ctx: LabelCtx, node: NodeProto) -> tuple[str, str, str, str, int]:
    """Input, weight, bias ("" if none), output and the output's rank of a Conv / ConvTranspose."""
    out = node.output[0]
    return node.input[0], node.input[1], node.input[2] if len(node.input) > 2 else "", out, ctx.rank(out)


@rule("Conv", rewrite=_rewrite_group)
def conv(ctx: LabelCtx, node: NodeProto) -> None:
    x, w, bias, out, rank = _io(ctx, node)
    if not ctx.is_param(w):
        ctx.block(ctx.lab(x), f"Conv {node.name!r} has a computed weight")
        return
    group = int(ctx.attr(node, "group", 1))
    c_in = ctx.shape(x)[1]
    c_out, w_in = ctx.shape(w)[0], ctx.shape(w)[1]
    xl = ctx.along(x, 1, node)
    wout = ctx.producer(w, 0)
    if group == 1:
        ctx.union(xl, ctx.pvar(w, 1))
        out_lab = wout
    elif w_in == 1:  # depthwise family: out channel o reads input channel o // mult
        mult = c_out // c_in
        ctx.union(np.repeat(xl, mult), wout)
        out_lab = wout
    else:  # grouped: couple the same in-group index across groups
        og = c_out // group
        win = ctx.pvar(w, 1)
        for gi in range(group):
            ctx.union(xl[gi * w_in:(gi + 1) * w_in], win)
            ctx.union(wout[gi * og:(gi + 1) * og], wout[:og])
        out_lab = wout
    if bias and ctx.is_param(bias):
        ctx.union(ctx.pvar(bias, 0), out_lab)
    ctx.consumer(node, 0)
    ctx.set(out, as_axis(out_lab, rank, 1))


@rule("ConvTranspose", rewrite=_rewrite_group)
def conv_transpose(ctx: LabelCtx, node: NodeProto) -> None:
    x, w, bias, out, rank = _io(ctx, node)
    group = int(ctx.attr(node, "group", 1))
    if not ctx.is_param(w) or group != 1:
        ctx.block(ctx.lab(x), f"ConvTranspose {node.name!r} with group={group} or a computed weight")
        if ctx.is_param(w):
            ctx.set(out, none_labels(rank))
        return
    xl = ctx.along(x, 1, node)
    ctx.union(xl, ctx.pvar(w, 0))
    out_lab = ctx.producer(w, 1)
    if bias and ctx.is_param(bias):
        ctx.union(ctx.pvar(bias, 0), out_lab)
    ctx.consumer(node, 0)
    ctx.set(out, as_axis(out_lab, rank, 1))

