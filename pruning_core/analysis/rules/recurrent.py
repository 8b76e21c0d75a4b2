"""LSTM, GRU and RNN: the hidden size is a group, the input side a consumer.

Hidden unit j owns row j of every gate block of W and R (LSTM: i o f c; GRU: z r h; RNN: one),
the same entries of B (the W and the R halves) and of the LSTM's peepholes P, column j of R (the
recurrence reads its own hidden state), position j of the initial states and of Y / Y_h / Y_c.
The input channels of X are consumed by W's last axis. Both directions share the hidden axis.

Why removing unit j is exact: with its gate rows zero (and zero initial state), i = f = o = 1/2
and g = tanh(0) = 0 (GRU: n = 0; RNN: tanh / relu of 0), so its state stays 0 and it contributes
nothing through R. Verification zeroes those rows in the masked original (``LabelCtx.zero_rows``), the
recurrent counterpart of masking a consumer's input. Gate activations other than the defaults,
a non-zero or computed initial state: the hidden group stays whole, with the reason.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper

from pruning_core.analysis.labels import LabelCtx
from pruning_core.analysis.rules.common import as_axis
from pruning_core.analysis.rules.registry import rule

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# activations whose value at 0 keeps a zeroed unit at 0 (see the module docstring)
DEFAULT_ACTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
ZERO_AT_ZERO = {"Tanh", "Relu"}


def _acts_ok(ctx: LabelCtx, node: NodeProto) -> bool:
    raw = ctx.attr(node, "activations", None)
    if not raw:
        return True
    acts = [a.decode() if isinstance(a, bytes) else str(a) for a in raw]
    n = len(DEFAULT_ACTS[node.op_type])
    if node.op_type == "RNN":
        return all(a in ZERO_AT_ZERO for a in acts)
    return all(tuple(acts[k:k + n]) == DEFAULT_ACTS[node.op_type] for k in range(0, len(acts), n))


def _rewrite(sx, node: NodeProto) -> None:
    out = next((o for o in node.output if o), None)
    if out is None:
        return
    hidden = sx.new_shape(out)[-1]
    if hidden != int(sx.attr(node, "hidden_size", 0)):
        sx.set_attr(node, helper.make_attribute("hidden_size", int(hidden)))


@rule(*GATES, rewrite=_rewrite)
def recurrent(ctx: LabelCtx, node: NodeProto) -> None:
    op = node.op_type
    ins = list(node.input) + [""] * (8 - len(node.input))
    x, w, r, b = ins[0], ins[1], ins[2], ins[3]
    init_h, init_c, peep = ins[5], ins[6] if op == "LSTM" else "", ins[7] if op == "LSTM" else ""
    gates = GATES[op]
    # the input side: X's features are W's last axis, whatever happens to the hidden size
    if ctx.is_param(w):
        ctx.union(ctx.along(x, 2, node), ctx.pvar(w, 2))
        ctx.consumer(node, 0)
    elif ctx.has_labels(x):
        ctx.block(ctx.lab(x), f"{op} {node.name!r} has a computed input weight")
    params = [n for n in (w, r, b, peep) if n]
    why = None
    if not all(ctx.is_param(n) for n in params):
        why = "a computed weight"
    elif not _acts_ok(ctx, node):
        why = "gate activations other than the defaults"
    else:
        for s in (init_h, init_c):
            if s and not ctx.is_param(s):
                why = "an initial state computed in the graph"
            elif s and (ctx.const(s) is None or np.any(ctx.const(s))):  # a view of one: not known zero
                why = "a non-zero initial state"
    hid = ctx.uf.new(ctx.shape(r)[-1])  # R: [directions, gates x hidden, hidden]
    for name, axis, reps in ((w, 1, gates), (r, 1, gates), (r, 2, 1), (b, 1, 2 * gates), (peep, 1, 3),
                             (init_h, 2, 1), (init_c, 2, 1)):
        if name and ctx.is_param(name):
            v = ctx.producer(name, axis) if name == w else ctx.pvar(name, axis)
            ctx.union(np.tile(hid, reps), v)
    if why is None:
        ctx.zero_rows([(n, 1) for n in (w, r, b, peep) if n])
    else:
        ctx.block(hid, f"{op} {node.name!r} keeps its hidden size: {why}")
    # Y [seq, dir, batch, H] (layout 1: [batch, seq, dir, H]); Y_h, Y_c [dir, batch, H] ([batch, dir, H]):
    # the hidden axis is last in both layouts
    for out in node.output:
        if out:
            rank = ctx.rank(out)
            ctx.set(out, as_axis(hid, rank, rank - 1))
