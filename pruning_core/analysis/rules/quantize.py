"""QuantizeLinear / DequantizeLinear: pruning through QDQ graphs.

A DequantizeLinear of a constant is the weight the next op sees: its output is a *view* of the
integer initializer (the Conv / MatMul rule slices that; a QuantizeLinear of a constant likewise), and a per-channel scale and zero point
(1-D, along ``axis``) are coupled to the same axis so they lose the same positions. On
activations both ops are elementwise: a per-tensor scale passes the channels through unchanged
(the kept channels are quantized exactly as before, so the cut stays exact); a per-channel one is
sliced with the channels it scales. Blocked quantization (``block_size``) is refused per place.
"""

from __future__ import annotations

from onnx import NodeProto

from pruning_core.analysis.labels import LabelCtx
from pruning_core.analysis.rules.registry import rule


def _per_channel(ctx: LabelCtx, name: str) -> bool:
    return bool(name) and len(ctx.shape(name)) == 1 and ctx.shape(name)[0] > 1


@rule("QuantizeLinear", "DequantizeLinear")
def qdq(ctx: LabelCtx, node: NodeProto) -> None:
    x, out = node.input[0], node.output[0]
    scale = node.input[1] if len(node.input) > 1 else ""
    zero = node.input[2] if len(node.input) > 2 else ""
    rank = ctx.rank(x)
    axis = int(ctx.attr(node, "axis", 1)) % max(rank, 1)
    side = [n for n in (scale, zero) if n]
    if int(ctx.attr(node, "block_size", 0)):
        if ctx.has_labels(x):
            ctx.block(ctx.lab(x), f"{node.op_type} {node.name!r} uses blocked quantization (block_size)")
        return
    if ctx.is_param(x):
        # DequantizeLinear(int weight), or a constant fake-quantized as an activation would be
        # (QuantizeLinear -> DequantizeLinear of a float bias shared through Identity)
        if not all(ctx.is_param(n) for n in side):
            return  # a computed scale: the output is an activation without channels of its own
        ctx.add_view(node)
        for n in side:
            if _per_channel(ctx, n):
                ctx.union(ctx.pvar(n, 0), ctx.pvar(x, axis))
        return
    if not ctx.has_labels(x):
        return
    lab = ctx.lab(x)
    for n in side:
        if not _per_channel(ctx, n):
            continue
        if not ctx.is_param(n):
            ctx.block(lab, f"{node.op_type} {node.name!r} has a computed per-channel scale or zero point")
            return
        ctx.union(ctx.pvar(n, 0), ctx.along(x, axis, node))
    ctx.set(out, lab)
