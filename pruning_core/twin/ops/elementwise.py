"""Elementwise math, comparison, logic and bitwise ops; Identity, Dropout (inference), Cast."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from pruning_core.twin.ops.common import register_unary
from pruning_core.twin.ops.table import OPS, Attrs, OpFn, OpResult, Tensor
from pruning_core.twin.ops.tensors import torch_dtype


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    return lambda a, ins: fn(ins[0], ins[1])  # type: ignore[arg-type]


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def run(a: Attrs, ins: list[Tensor | None]) -> Tensor:
        return functools.reduce(fn, [t for t in ins if t is not None])

    return run


_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Exp": torch.exp,
    "Log": torch.log,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,  # half to even, like ONNX
    "Sign": torch.sign,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "Not": torch.logical_not,
    "IsNaN": torch.isnan,
    "BitwiseNot": torch.bitwise_not,
}
register_unary(_UNARY)


_BINARY: dict[str, OpFn] = {
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt),
    "LessOrEqual": _binary(torch.le),
    "Greater": _binary(torch.gt),
    "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or),
    "Xor": _binary(torch.logical_xor),
    "BitwiseAnd": _binary(torch.bitwise_and),
    "BitwiseOr": _binary(torch.bitwise_or),
    "BitwiseXor": _binary(torch.bitwise_xor),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
}
for _name, _op in _BINARY.items():
    OPS[_name] = _op


@OPS.register("Identity", "Dropout")
def _identity(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    x = ins[0]
    assert x is not None
    if a.op_type == "Dropout" and a.num_outputs > 1:
        # Inference semantics: nothing dropped, the mask is all ones.
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


@OPS.register("IsInf")
def _isinf(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    pos, neg = a.get("detect_positive", 1), a.get("detect_negative", 1)
    if pos and neg:
        return torch.isinf(x)
    if pos:
        return torch.isposinf(x)
    if neg:
        return torch.isneginf(x)
    return torch.zeros_like(x, dtype=torch.bool)


@OPS.register("Div")
def _div(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, y = ins[0], ins[1]
    assert x is not None and y is not None
    if x.is_floating_point() or x.is_complex():
        return x / y
    # ONNX integer division truncates toward zero (C semantics), as onnxruntime does.
    return torch.div(x, y, rounding_mode="trunc")


@OPS.register("Pow")
def _pow(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, y = ins[0], ins[1]
    assert x is not None and y is not None
    # The result takes the base's type (torch would promote int ** float to float).
    if x.is_floating_point() and y.dtype != x.dtype:
        y = y.to(x.dtype)
    out = torch.pow(x, y)
    return out if out.dtype == x.dtype else out.to(x.dtype)


@OPS.register("Mod")
def _mod(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, y = ins[0], ins[1]
    assert x is not None and y is not None
    # fmod=0: result takes the divisor's sign (Python %), fmod=1: the dividend's sign (C fmod).
    return torch.fmod(x, y) if a.get("fmod", 0) else torch.remainder(x, y)


@OPS.register("BitShift")
def _bitshift(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, y = ins[0], ins[1]
    assert x is not None and y is not None
    if a["direction"] == "LEFT":
        return torch.bitwise_left_shift(x, y)
    return torch.bitwise_right_shift(x, y)


@OPS.register("Mean")
def _mean(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    xs = [t for t in ins if t is not None]
    return functools.reduce(torch.add, xs) / len(xs)


@OPS.register("Where")
def _where(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    c, x, y = ins[0], ins[1], ins[2]
    assert c is not None and x is not None and y is not None
    return torch.where(c.to(torch.bool), x, y)


@OPS.register("Cast")
def _cast(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return x.to(torch_dtype(a["to"]))


@OPS.register("CastLike")
def _cast_like(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, like = ins[0], ins[1]
    assert x is not None and like is not None
    return x.to(like.dtype)
