"""Reductions (Reduce*, ArgMax/ArgMin), TopK and CumSum."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pruning_core.twin.ops.common import axes_arg, norm_axis
from pruning_core.twin.ops.table import OPS, Attrs, OpFn, OpResult, Tensor


def _reduce(fn: Callable[[Tensor, list[int], bool], Tensor], keep_dtype: bool = False) -> OpFn:
    def run(a: Attrs, ins: list[Tensor | None]) -> Tensor:
        x = ins[0]
        assert x is not None
        axes = axes_arg(a, ins, 1)
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        axes = [norm_axis(ax, x.dim()) for ax in axes]
        y = fn(x, axes, bool(a.get("keepdims", 1)))
        # torch promotes integer sums to int64; ONNX keeps the input type.
        return y.to(x.dtype) if keep_dtype and y.dtype != x.dtype else y

    return run


def _prod(x: Tensor, axes: list[int], keep: bool) -> Tensor:
    for ax in sorted(axes, reverse=True):
        x = x.prod(dim=ax, keepdim=keep)
    return x


_REDUCTIONS: dict[str, OpFn] = {
    "ReduceMean": _reduce(lambda x, d, k: x.mean(dim=d, keepdim=k)),
    "ReduceSum": _reduce(lambda x, d, k: x.sum(dim=d, keepdim=k), keep_dtype=True),
    "ReduceMax": _reduce(lambda x, d, k: x.amax(dim=d, keepdim=k)),
    "ReduceMin": _reduce(lambda x, d, k: x.amin(dim=d, keepdim=k)),
    "ReduceProd": _reduce(_prod, keep_dtype=True),
    "ReduceL1": _reduce(lambda x, d, k: x.abs().sum(dim=d, keepdim=k), keep_dtype=True),
    "ReduceL2": _reduce(lambda x, d, k: torch.linalg.vector_norm(x, 2, dim=d, keepdim=k)),
    "ReduceSumSquare": _reduce(lambda x, d, k: (x * x).sum(dim=d, keepdim=k), keep_dtype=True),
    "ReduceLogSum": _reduce(lambda x, d, k: torch.log(x.sum(dim=d, keepdim=k))),
    "ReduceLogSumExp": _reduce(lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k)),
}
for _name, _fn in _REDUCTIONS.items():
    OPS[_name] = _fn


def _arg_reduce(largest: bool) -> OpFn:
    def run(a: Attrs, ins: list[Tensor | None]) -> Tensor:
        x = ins[0]
        assert x is not None
        axis = norm_axis(a.get("axis", 0), x.dim())
        keep = bool(a.get("keepdims", 1))
        fn = torch.argmax if largest else torch.argmin
        if a.get("select_last_index", 0):
            return x.shape[axis] - 1 - fn(x.flip(axis), dim=axis, keepdim=keep)
        return fn(x, dim=axis, keepdim=keep)

    return run


OPS["ArgMax"] = _arg_reduce(True)
OPS["ArgMin"] = _arg_reduce(False)


@OPS.register("TopK")
def _topk(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    x, k = ins[0], ins[1]
    assert x is not None and k is not None
    values, idx = torch.topk(x, int(k.reshape(-1)[0]), a.get("axis", -1), bool(a.get("largest", 1)), True)
    return values, idx


@OPS.register("CumSum")
def _cumsum(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, ax = ins[0], ins[1]
    assert x is not None and ax is not None
    axis = norm_axis(int(ax.reshape(-1)[0]), x.dim())
    if a.get("reverse", 0):
        x = x.flip(axis)
    y = torch.cumsum(x, axis).to(x.dtype)
    if a.get("exclusive", 0):
        y = torch.cat([torch.zeros_like(y.narrow(axis, 0, 1)), y.narrow(axis, 0, y.shape[axis] - 1)], axis)
    return y.flip(axis) if a.get("reverse", 0) else y
