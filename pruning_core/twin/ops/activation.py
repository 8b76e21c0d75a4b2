"""Activations (Relu family, Gelu, Clip...) and the softmax family."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from pruning_core.twin.ops.common import given, norm_axis, register_unary
from pruning_core.twin.ops.table import OPS, Attrs, OpFn, Tensor

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Softsign": F.softsign,
    "Mish": F.mish,
}
register_unary(_ACTIVATIONS)


@OPS.register("Softplus")
def _softplus(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    # torch's default threshold (20) switches to identity where log1p(exp(x)) == x in float32 anyway.
    return F.softplus(x)


@OPS.register("LeakyRelu")
def _leaky_relu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return F.leaky_relu(ins[0], a.get("alpha", 0.01))  # type: ignore[arg-type]


@OPS.register("Elu")
def _elu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return F.elu(ins[0], a.get("alpha", 1.0))  # type: ignore[arg-type]


@OPS.register("Celu")
def _celu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return F.celu(ins[0], a.get("alpha", 1.0))  # type: ignore[arg-type]


@OPS.register("Selu")
def _selu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    alpha = a.get("alpha", 1.67326319217681884765625)
    gamma = a.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@OPS.register("ThresholdedRelu")
def _thresholded_relu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return torch.where(x > a.get("alpha", 1.0), x, torch.zeros_like(x))


@OPS.register("PRelu")
def _prelu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, slope = ins[0], ins[1]
    assert x is not None and slope is not None
    return torch.where(x < 0, x * slope, x)


@OPS.register("HardSigmoid")
def _hard_sigmoid(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0)


@OPS.register("HardSwish")
def _hard_swish(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return F.hardswish(ins[0])  # type: ignore[arg-type]


@OPS.register("Gelu")
def _gelu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return F.gelu(ins[0], approximate=a.get("approximate", "none"))  # type: ignore[arg-type]


@OPS.register("Shrink")
def _shrink(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    lambd, bias = a.get("lambd", 0.5), a.get("bias", 0.0)
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))


@OPS.register("Clip")
def _clip(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    if a.opset < 11:
        lo: Any = a.get("min", None)
        hi: Any = a.get("max", None)
    else:
        lo, hi = given(ins, 1), given(ins, 2)
    if lo is None and hi is None:
        return x
    return torch.clamp(x, min=lo, max=hi)


def _softmax_like(fn: Callable[[Tensor, int], Tensor]) -> OpFn:
    def run(a: Attrs, ins: list[Tensor | None]) -> Tensor:
        x = ins[0]
        assert x is not None
        if a.opset >= 13:
            return fn(x, a.get("axis", -1))
        # Before opset 13 the input is coerced to 2-D at `axis` and normalized over the tail.
        axis = norm_axis(a.get("axis", 1), x.dim())
        flat = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
        return fn(flat, 1).reshape(x.shape)

    return run


def _hardmax(x: Tensor, axis: int) -> Tensor:
    return F.one_hot(x.argmax(axis), x.shape[axis]).movedim(-1, axis).to(x.dtype)


OPS["Softmax"] = _softmax_like(lambda x, ax: torch.softmax(x, ax))
OPS["LogSoftmax"] = _softmax_like(lambda x, ax: torch.log_softmax(x, ax))
OPS["Hardmax"] = _softmax_like(_hardmax)
