"""Sequences and control flow.

The TorchScript exporter emits sequence ops for Python lists of tensors. A sequence value is a
Python list of tensors; a sequence op returns it wrapped in a 1-tuple so the executor does not
mistake the list for several outputs. ``If`` is run by the executor itself (its branches need the
enclosing scope); its entry here only makes it a known op."""

from __future__ import annotations

from typing import Any

import torch

from pruning_core.twin.ops.common import given, ints, norm_axis
from pruning_core.twin.ops.table import OPS, Attrs, OpResult, Tensor


@OPS.register("SequenceConstruct")
def _sequence_construct(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    return ([t for t in ins if t is not None],)  # type: ignore[return-value]


@OPS.register("SequenceEmpty")
def _sequence_empty(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    return ([],)  # type: ignore[return-value]


@OPS.register("SequenceAt")
def _sequence_at(a: Attrs, ins: list[Any]) -> Tensor:
    seq, pos = ins[0], ins[1]
    return seq[int(pos.reshape(-1)[0])]


@OPS.register("SequenceLength")
def _sequence_length(a: Attrs, ins: list[Any]) -> Tensor:
    return torch.tensor(len(ins[0]), dtype=torch.int64)


@OPS.register("SequenceInsert")
def _sequence_insert(a: Attrs, ins: list[Any]) -> OpResult:
    seq = list(ins[0])
    pos = given(ins, 2)
    seq.insert(len(seq) if pos is None else int(pos.reshape(-1)[0]), ins[1])
    return (seq,)  # type: ignore[return-value]


@OPS.register("SequenceErase")
def _sequence_erase(a: Attrs, ins: list[Any]) -> OpResult:
    seq = list(ins[0])
    pos = given(ins, 1)
    del seq[-1 if pos is None else int(pos.reshape(-1)[0])]
    return (seq,)  # type: ignore[return-value]


@OPS.register("SplitToSequence")
def _split_to_sequence(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    x, split = ins[0], given(ins, 1)
    assert x is not None
    axis = norm_axis(a.get("axis", 0), x.dim())
    if split is None:
        parts = list(torch.split(x, 1, dim=axis))
        if not a.get("keepdims", 1):
            parts = [p.squeeze(axis) for p in parts]
    elif split.dim() == 0:
        parts = list(torch.split(x, int(split), dim=axis))
    else:
        parts = list(torch.split(x, ints(split) or [], dim=axis))
    return (parts,)  # type: ignore[return-value]


@OPS.register("ConcatFromSequence")
def _concat_from_sequence(a: Attrs, ins: list[Any]) -> Tensor:
    seq = ins[0]
    if a.get("new_axis", 0):
        return torch.stack(seq, dim=norm_axis(a["axis"], seq[0].dim() + 1))
    return torch.cat(seq, dim=a["axis"])


@OPS.register("If")
def _if(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    # Subgraphs need the enclosing scope: the executor runs If itself (see OnnxTwin._run_if).
    raise RuntimeError("If is executed by the OnnxTwin executor, not through the op table")
