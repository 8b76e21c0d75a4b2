"""Ops that make tensors: Constant, ConstantOfShape, Range, EyeLike."""

from __future__ import annotations

import math

import torch

from pruning_core.twin.ops.common import ints
from pruning_core.twin.ops.table import CHECKS, OPS, Attrs, Tensor
from pruning_core.twin.ops.tensors import torch_dtype


@OPS.register("ConstantOfShape")
def _constant_of_shape(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    shape = ints(ins[0]) or []
    value = a.get("value")
    if value is None:
        return torch.zeros(shape, dtype=torch.float32)
    return value.reshape(()).to(ins[0].device if ins[0] is not None else "cpu").expand(shape).clone()


@OPS.register("Constant")
def _constant(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    if "value" in a:
        return a["value"]
    if "value_float" in a:
        return torch.tensor(a["value_float"], dtype=torch.float32)
    if "value_floats" in a:
        return torch.tensor(a["value_floats"], dtype=torch.float32)
    if "value_int" in a:
        return torch.tensor(a["value_int"], dtype=torch.int64)
    if "value_ints" in a:
        return torch.tensor(a["value_ints"], dtype=torch.int64)
    raise NotImplementedError(f"Constant with attributes {sorted(a)}")


@CHECKS.register("Constant")
def _constant_check(a: Attrs) -> str | None:
    if not {"value", "value_float", "value_floats", "value_int", "value_ints"} & set(a):
        return f"attribute(s) {sorted(a)} (only numeric tensor constants are supported)"
    return None


@OPS.register("Range")
def _range(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    start, limit, delta = ins[0], ins[1], ins[2]
    assert start is not None and limit is not None and delta is not None
    s, lim, d = start.reshape(()), limit.reshape(()), delta.reshape(())
    if start.is_floating_point():
        # ONNX: n = max(ceil((limit - start) / delta), 0), values start + i * delta.
        n = max(int(math.ceil((lim.item() - s.item()) / d.item())), 0)
        return s + torch.arange(n, dtype=start.dtype, device=start.device) * d
    return torch.arange(int(s), int(lim), int(d), dtype=start.dtype, device=start.device)


@OPS.register("EyeLike")
def _eye_like(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    dtype = torch_dtype(a["dtype"]) if "dtype" in a else x.dtype
    eye = torch.ones(x.shape, dtype=dtype, device=x.device)
    return torch.triu(torch.tril(eye, a.get("k", 0)), a.get("k", 0))
