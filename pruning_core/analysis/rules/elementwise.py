"""Unary activations and broadcasting n-ary ops: residual Add, SE gates (Mul), per-channel
constants (bias, scale, PRelu slope), Where, Pow... Channels pass through unchanged; inputs that
meet elementwise are coupled; constant operands are sliced along the channel axis."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from pruning_core.analysis.labels import LabelCtx
from pruning_core.analysis.rules.common import pad_rank
from pruning_core.analysis.rules.registry import rule

UNARY = ["Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Tanh", "Clip",
         "Softplus", "Softsign", "Elu", "Selu", "Celu", "Mish", "ThresholdedRelu", "Exp", "Log", "Sqrt",
         "Reciprocal", "Neg", "Abs", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN",
         "IsInf", "Identity", "Dropout", "Cast", "CastLike", "Shrink", "Swish", "QuickGelu"]
NARY = ["Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Sum", "Mean", "PRelu", "Equal",
        "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "BitwiseAnd",
        "BitwiseOr"]


PASS_VIEW = {"Identity", "Cast", "Dropout"}


@rule(*UNARY, *NARY)
def elementwise(ctx: LabelCtx, node: NodeProto) -> None:
    out = node.output[0]
    if node.op_type in PASS_VIEW and ctx.is_param(node.input[0]):
        ctx.add_view(node)  # a weight reused through Identity (torchscript exports of shared layers)
        return
    rank = ctx.rank(out)
    acts = [pad_rank(ctx.lab(n), rank) for n in node.input if n and not ctx.is_param(n) and ctx.has_labels(n)]
    if not acts:
        return
    lab = ctx.combine(acts)
    lab = pad_rank(lab, rank)
    _block_unlabeled_operands(ctx, node, lab, rank)
    for name in node.input:
        if not name or not ctx.is_param(name):
            continue
        shp = ctx.shape(name)
        off = rank - len(shp)
        for ax, size in enumerate(shp):
            if size > 1 and lab.shape[off + ax] > 1:
                v = ctx.pvar(name, ax)
                vec = ctx.along_arr(lab, off + ax, size, node)
                if v is None:
                    ctx.block(vec, f"constant {name!r} of {node.op_type} node {node.name!r} cannot be sliced")
                else:
                    ctx.union(v, vec)
    ctx.set(out, lab)
    if node.op_type == "Dropout" and len(node.output) > 1:
        ctx.set(node.output[1], lab)


def _block_unlabeled_operands(ctx: LabelCtx, node: NodeProto, lab, rank: int) -> None:
    """An activation operand that is not broadcast along a channel axis and carries no channel
    there (a graph input in a residual Add) cannot lose those positions: block them."""
    for name in node.input:
        if not name or ctx.is_param(name):
            continue
        shp = (1,) * (rank - ctx.rank(name)) + tuple(ctx.shape(name))
        own = pad_rank(ctx.lab(name), rank)
        for ax in range(rank):
            if lab.shape[ax] > 1 and shp[ax] > 1:
                mine = np.broadcast_to(own, lab.shape)
                bad = (mine < 0) & (lab >= 0)
                if bad.any():
                    ctx.block(lab[bad], f"{node.op_type} {node.name!r} meets {name!r}, which cannot lose channels")
