"""Reductions, softmax, pooling, Resize, Pad. Reducing or normalizing over an axis along which
channels vary makes those channels unprunable (the result would change); over other axes the
channels pass through."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from pruning_core.analysis.labels import LabelCtx
from pruning_core.analysis.rules.registry import rule

# Averaging-like reductions over channels change statistics (RMSNorm, GRN): approximate, like
# LayerNorm. Selecting reductions (max / min / argmax) and softmax cannot lose channels at all.
APPROX_REDUCE = {"ReduceMean", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare"}
REDUCE = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]


def _reduce_axes(ctx: LabelCtx, node: NodeProto, rank: int) -> list[int]:
    axes = ctx.attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        c = ctx.const(node.input[1])
        if c is None:
            raise ValueError("reduction axes are not constant")
        axes = c.tolist()
    if not axes:
        return [] if int(ctx.attr(node, "noop_with_empty_axes", 0)) else list(range(rank))
    return sorted(int(a) % rank for a in np.atleast_1d(axes))


def _reduced(ctx: LabelCtx, node: NodeProto, axes: list[int], keepdims: bool, what: str) -> None:
    x = node.input[0]
    lab = ctx.lab(x)
    if any(lab.shape[ax] > 1 for ax in axes):
        if node.op_type in APPROX_REDUCE:
            ctx.mark_approx(lab, f"{node.op_type} {node.name!r} averages over the channel axis")
            ctx.consumer(node, 0)
        else:
            ctx.block(lab, f"{what} over the channel axis at {node.op_type} {node.name!r}")
        lab = np.full_like(lab, -1)
    out = lab
    for ax in sorted(axes, reverse=True):
        out = out.take([0], axis=ax)
        if not keepdims:
            out = out.squeeze(ax)
    for o in node.output:
        if o:
            ctx.set(o, out)


@rule(*REDUCE)
def reduce(ctx: LabelCtx, node: NodeProto) -> None:
    if not ctx.has_labels(node.input[0]):
        return
    rank = ctx.rank(node.input[0])
    _reduced(ctx, node, _reduce_axes(ctx, node, rank), bool(ctx.attr(node, "keepdims", 1)), "reduction")


@rule("ArgMax", "ArgMin")
def argreduce(ctx: LabelCtx, node: NodeProto) -> None:
    if not ctx.has_labels(node.input[0]):
        return
    rank = ctx.rank(node.input[0])
    axis = int(ctx.attr(node, "axis", 0)) % rank
    _reduced(ctx, node, [axis], bool(ctx.attr(node, "keepdims", 1)), "arg-reduction")


@rule("Softmax", "LogSoftmax", "Hardmax", "CumSum", "TopK")
def along_axis(ctx: LabelCtx, node: NodeProto) -> None:
    x = node.input[0]
    if not ctx.has_labels(x):
        return
    rank = ctx.rank(x)
    lab = ctx.lab(x)
    if node.op_type == "CumSum":
        c = ctx.const(node.input[1])
        axes = [int(np.asarray(c).item()) % rank] if c is not None else list(range(rank))
    elif node.op_type == "TopK":
        axes = [int(ctx.attr(node, "axis", -1)) % rank]
    else:
        default = -1 if ctx.g.opset >= 13 else 1
        axis = int(ctx.attr(node, "axis", default)) % rank
        axes = [axis] if ctx.g.opset >= 13 else list(range(axis, rank))
    if any(lab.shape[ax] > 1 for ax in axes):
        ctx.block(lab, f"{node.op_type} over the channel axis at node {node.name!r}")
    for o in node.output:
        if o:
            ctx.set(o, lab)


@rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def pool(ctx: LabelCtx, node: NodeProto) -> None:
    x = node.input[0]
    if not ctx.has_labels(x):
        return
    lab = ctx.lab(x)
    if any(lab.shape[ax] > 1 for ax in range(2, lab.ndim)) or lab.shape[0] > 1:
        ctx.block(lab, f"{node.op_type} {node.name!r}: channels vary over pooled axes")
        return
    ctx.set(node.output[0], lab)


def _rewrite_resize(sx, node: NodeProto) -> None:
    if len(node.input) > 3 and node.input[3]:
        sx.set_const_input(node, 3, sx.new_shape(node.output[0]))


@rule("Resize", "Upsample", rewrite=_rewrite_resize)
def resize(ctx: LabelCtx, node: NodeProto) -> None:
    x = node.input[0]
    if not ctx.has_labels(x):
        return
    lab = ctx.lab(x)
    xs, ys = ctx.shape(x), ctx.shape(node.output[0])
    if any(lab.shape[ax] > 1 and xs[ax] != ys[ax] for ax in range(lab.ndim)):
        ctx.block(lab, f"{node.op_type} {node.name!r} resizes the channel axis")
        return
    ctx.set(node.output[0], lab)


@rule("Pad")
def pad(ctx: LabelCtx, node: NodeProto) -> None:
    x = node.input[0]
    if not ctx.has_labels(x):
        return
    lab = ctx.lab(x)
    rank = lab.ndim
    pads = ctx.attr(node, "pads", None)
    if pads is None:
        c = ctx.const(node.input[1])
        if c is None:
            ctx.block(lab, f"Pad {node.name!r} with computed pads")
            return
        pads = c.tolist()
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        axes = [int(a) % rank for a in ctx.const(node.input[3]).tolist()]  # type: ignore[union-attr]
    widths = [(0, 0)] * rank
    n = len(axes)
    for i, ax in enumerate(axes):
        widths[ax] = (int(pads[i]), int(pads[i + n]))
    mode = ctx.attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    varying = [ax for ax in range(rank) if lab.shape[ax] > 1 and widths[ax] != (0, 0)]
    if varying and mode != "constant":
        ctx.block(lab, f"Pad {node.name!r} ({mode}) on the channel axis")
        return
    if varying:
        w = [widths[ax] if ax in varying else (0, 0) for ax in range(rank)]
        lab = np.pad(lab, w, constant_values=-1)  # compact: only varying axes have full size
    ctx.set(node.output[0], lab)
