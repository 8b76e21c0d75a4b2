"""Argument helpers shared by the op families."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pruning_core.twin.ops.table import Attrs, OpFn, Tensor


def ints(t: Tensor | Sequence[int] | None) -> list[int] | None:
    if t is None:
        return None
    if isinstance(t, Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def given(ins: list[Tensor | None], i: int) -> Tensor | None:
    """Optional input i, or None when absent (missing, empty name, or an empty tensor)."""
    if len(ins) <= i or ins[i] is None:
        return None
    t = ins[i]
    assert t is not None
    return t


def axes_arg(a: Attrs, ins: list[Tensor | None], idx: int) -> list[int] | None:
    """Axes given either as attribute (older opsets) or as input ``idx`` (newer ones)."""
    if "axes" in a:
        return list(a["axes"])
    t = given(ins, idx)
    return ints(t) if t is not None else None


def torch_pad(pads: Sequence[tuple[int, int]]) -> list[int]:
    """Per-dim (begin, end) pairs in dim order -> F.pad's list (last dim first)."""
    flat: list[int] = []
    for b, e in reversed(pads):
        flat += [b, e]
    return flat


def unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    """The op for a one-input torch function (no attributes)."""
    return lambda a, ins: fn(ins[0])  # type: ignore[arg-type]


def register_unary(table: dict[str, Callable[[Tensor], Tensor]]) -> None:
    """Register a table of one-input torch functions (no attributes) by ONNX op type."""
    from pruning_core.twin.ops.table import OPS

    for name, fn in table.items():
        OPS[name] = unary(fn)
