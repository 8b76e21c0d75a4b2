"""Torch implementations of ONNX operators, used by the torch twin (``pruning_core.twin.executor``).

One table, ``OPS``: op type -> ``fn(attrs, inputs) -> Tensor | tuple[Tensor | None, ...]``.
``attrs`` is an :class:`Attrs` (the node's attributes, decoded, plus the opset and the number of
outputs the node declares); ``inputs`` are torch tensors, ``None`` for absent optional inputs.

Every function mirrors onnxruntime's CPU kernels rather than torch's own conventions where the two
differ (Resize coordinate rules, Pad modes, asymmetric pads, integer Div/Mod...), because the twin
must agree with onnxruntime to 1e-4 of the output scale. Functions stay differentiable in their
float inputs: no in-place writes into tensors that may require grad, no ``.item()`` on data paths.

``CHECKS`` holds construction-time validators for attribute combinations a function does not
implement, so that the executor can refuse a model up front instead of failing mid-forward.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

Tensor = torch.Tensor
OpResult = Tensor | tuple[Tensor | None, ...] | list[Tensor]
OpFn = Callable[["Attrs", list[Tensor | None]], OpResult]


class Attrs(dict[str, Any]):
    """A node's decoded attributes, plus the context an op needs beyond them."""

    def __init__(
        self, values: dict[str, Any], *, op_type: str, opset: int, num_outputs: int, node_name: str
    ) -> None:
        super().__init__(values)
        self.op_type = op_type
        self.opset = opset
        self.num_outputs = num_outputs
        self.node_name = node_name


OPS: dict[str, OpFn] = {}
CHECKS: dict[str, Callable[[Attrs], str | None]] = {}


def op(*names: str) -> Callable[[OpFn], OpFn]:
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = fn
        return fn

    return register


def check(*names: str) -> Callable[[Callable[[Attrs], str | None]], Callable[[Attrs], str | None]]:
    def register(fn: Callable[[Attrs], str | None]) -> Callable[[Attrs], str | None]:
        for name in names:
            CHECKS[name] = fn
        return fn

    return register


# --------------------------------------------------------------------------- dtypes and tensors

_P = onnx.TensorProto
ONNX_TO_TORCH: dict[int, torch.dtype] = {
    _P.FLOAT: torch.float32,
    _P.DOUBLE: torch.float64,
    _P.FLOAT16: torch.float16,
    _P.BFLOAT16: torch.bfloat16,
    _P.INT8: torch.int8,
    _P.UINT8: torch.uint8,
    _P.INT16: torch.int16,
    _P.UINT16: torch.uint16,
    _P.INT32: torch.int32,
    _P.UINT32: torch.uint32,
    _P.INT64: torch.int64,
    _P.UINT64: torch.uint64,
    _P.BOOL: torch.bool,
    _P.COMPLEX64: torch.complex64,
    _P.COMPLEX128: torch.complex128,
}
TORCH_TO_ONNX: dict[torch.dtype, int] = {v: k for k, v in ONNX_TO_TORCH.items()}


def torch_dtype(onnx_type: int) -> torch.dtype:
    try:
        return ONNX_TO_TORCH[onnx_type]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(onnx_type)
        raise TypeError(f"ONNX element type {name} has no torch equivalent in the twin") from None


def tensor_from_proto(proto: onnx.TensorProto) -> Tensor:
    """An ONNX TensorProto as a (CPU, owning) torch tensor, keeping its element type."""
    dtype = torch_dtype(proto.data_type)
    arr = numpy_helper.to_array(proto)
    if dtype == torch.bfloat16:
        # numpy has no bfloat16; float32 holds every bfloat16 value exactly.
        return torch.from_numpy(np.asarray(arr, dtype=np.float32).copy()).to(torch.bfloat16)
    return torch.from_numpy(np.array(arr, copy=True)).to(dtype)


def decode_attributes(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for at in node.attribute:
        value = onnx.helper.get_attribute_value(at)
        if at.type == onnx.AttributeProto.STRING:
            value = value.decode("utf-8")
        elif at.type == onnx.AttributeProto.STRINGS:
            value = [v.decode("utf-8") for v in value]
        elif at.type == onnx.AttributeProto.TENSOR:
            value = tensor_from_proto(value)
        elif at.type in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
            value = list(value)
        out[at.name] = value
    return out


# --------------------------------------------------------------------------- small helpers


def _ints(t: Tensor | Sequence[int] | None) -> list[int] | None:
    if t is None:
        return None
    if isinstance(t, Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _given(ins: list[Tensor | None], i: int) -> Tensor | None:
    """Optional input i, or None when absent (missing, empty name, or an empty tensor)."""
    if len(ins) <= i or ins[i] is None:
        return None
    t = ins[i]
    assert t is not None
    return t


def _axes_arg(a: Attrs, ins: list[Tensor | None], idx: int) -> list[int] | None:
    """Axes given either as attribute (older opsets) or as input ``idx`` (newer ones)."""
    if "axes" in a:
        return list(a["axes"])
    t = _given(ins, idx)
    return _ints(t) if t is not None else None


def _torch_pad(pads: Sequence[tuple[int, int]]) -> list[int]:
    """Per-dim (begin, end) pairs in dim order -> F.pad's list (last dim first)."""
    flat: list[int] = []
    for b, e in reversed(pads):
        flat += [b, e]
    return flat


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def run(a: Attrs, ins: list[Tensor | None]) -> Tensor:
        return functools.reduce(fn, [t for t in ins if t is not None])

    return run


# --------------------------------------------------------------------------- elementwise

_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
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
    "Softsign": F.softsign,
    "Not": torch.logical_not,
    "IsNaN": torch.isnan,
    "BitwiseNot": torch.bitwise_not,
    "Mish": F.mish,
}

for _name, _fn in _UNARY.items():
    OPS[_name] = lambda a, ins, _fn=_fn: _fn(ins[0])


@op("Identity", "Dropout")
def _identity(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    x = ins[0]
    assert x is not None
    if a.op_type == "Dropout" and a.num_outputs > 1:
        # Inference semantics: nothing dropped, the mask is all ones.
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


@op("Softplus")
def _softplus(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    # torch's default threshold (20) switches to identity where log1p(exp(x)) == x in float32 anyway.
    return F.softplus(x)


@op("LeakyRelu")
def _leaky_relu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return F.leaky_relu(ins[0], a.get("alpha", 0.01))  # type: ignore[arg-type]


@op("Elu")
def _elu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return F.elu(ins[0], a.get("alpha", 1.0))  # type: ignore[arg-type]


@op("Celu")
def _celu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return F.celu(ins[0], a.get("alpha", 1.0))  # type: ignore[arg-type]


@op("Selu")
def _selu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    alpha = a.get("alpha", 1.67326319217681884765625)
    gamma = a.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@op("ThresholdedRelu")
def _thresholded_relu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return torch.where(x > a.get("alpha", 1.0), x, torch.zeros_like(x))


@op("PRelu")
def _prelu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, slope = ins[0], ins[1]
    assert x is not None and slope is not None
    return torch.where(x < 0, x * slope, x)


@op("HardSigmoid")
def _hard_sigmoid(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0)


@op("HardSwish")
def _hard_swish(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return F.hardswish(ins[0])  # type: ignore[arg-type]


@op("Gelu")
def _gelu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return F.gelu(ins[0], approximate=a.get("approximate", "none"))  # type: ignore[arg-type]


@op("Shrink")
def _shrink(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    lambd, bias = a.get("lambd", 0.5), a.get("bias", 0.0)
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))


@op("IsInf")
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


@op("Clip")
def _clip(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    if a.opset < 11:
        lo: Any = a.get("min", None)
        hi: Any = a.get("max", None)
    else:
        lo, hi = _given(ins, 1), _given(ins, 2)
    if lo is None and hi is None:
        return x
    return torch.clamp(x, min=lo, max=hi)


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    return lambda a, ins: fn(ins[0], ins[1])  # type: ignore[arg-type]


OPS.update(
    {
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
)


@op("Div")
def _div(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, y = ins[0], ins[1]
    assert x is not None and y is not None
    if x.is_floating_point() or x.is_complex():
        return x / y
    # ONNX integer division truncates toward zero (C semantics), as onnxruntime does.
    return torch.div(x, y, rounding_mode="trunc")


@op("Pow")
def _pow(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, y = ins[0], ins[1]
    assert x is not None and y is not None
    # The result takes the base's type (torch would promote int ** float to float).
    if x.is_floating_point() and y.dtype != x.dtype:
        y = y.to(x.dtype)
    out = torch.pow(x, y)
    return out if out.dtype == x.dtype else out.to(x.dtype)


@op("Mod")
def _mod(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, y = ins[0], ins[1]
    assert x is not None and y is not None
    # fmod=0: result takes the divisor's sign (Python %), fmod=1: the dividend's sign (C fmod).
    return torch.fmod(x, y) if a.get("fmod", 0) else torch.remainder(x, y)


@op("BitShift")
def _bitshift(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, y = ins[0], ins[1]
    assert x is not None and y is not None
    if a["direction"] == "LEFT":
        return torch.bitwise_left_shift(x, y)
    return torch.bitwise_right_shift(x, y)


@op("Mean")
def _mean(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    xs = [t for t in ins if t is not None]
    return functools.reduce(torch.add, xs) / len(xs)


@op("Where")
def _where(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    c, x, y = ins[0], ins[1], ins[2]
    assert c is not None and x is not None and y is not None
    return torch.where(c.to(torch.bool), x, y)


# --------------------------------------------------------------------------- linear algebra


@op("MatMul")
def _matmul(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return torch.matmul(ins[0], ins[1])  # type: ignore[arg-type]


@op("Gemm")
def _gemm(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, w, c = ins[0], ins[1], _given(ins, 2)
    assert x is not None and w is not None
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    y = x @ w
    if alpha != 1.0:
        y = y * alpha
    if c is not None and beta != 0.0:
        y = y + (c if beta == 1.0 else beta * c)
    return y


@op("Einsum")
def _einsum(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return torch.einsum(a["equation"].replace(" ", ""), *[t for t in ins if t is not None])


# --------------------------------------------------------------------------- convolution / pooling


def _spatial_pads(
    a: Attrs, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dil: Sequence[int]
) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial dim, resolving auto_pad like onnxruntime."""
    n = len(kernel)
    auto_pad = a.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for i in range(n):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - spatial[i])
            small, big = total // 2, total - total // 2
            pads.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
        return pads
    if auto_pad == "VALID":
        return [(0, 0)] * n
    p = list(a.get("pads", [0] * (2 * n)))
    return [(p[i], p[i + n]) for i in range(n)]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@op("Conv")
def _conv(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, w, b = ins[0], ins[1], _given(ins, 2)
    assert x is not None and w is not None
    n = w.dim() - 2
    kernel = list(w.shape[2:])
    strides = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    pads = _spatial_pads(a, list(x.shape[2:]), kernel, strides, dil)
    if all(p0 == p1 for p0, p1 in pads):
        padding: list[int] | int = [p0 for p0, _ in pads]
    else:  # torch only pads symmetrically: pad explicitly, convolve without padding
        x = F.pad(x, _torch_pad(pads))
        padding = 0
    return _CONV[n](x, w, b, strides, padding, dil, a.get("group", 1))


@op("ConvTranspose")
def _conv_transpose(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, w, b = ins[0], ins[1], _given(ins, 2)
    assert x is not None and w is not None
    n = w.dim() - 2
    spatial = list(x.shape[2:])
    kernel = list(w.shape[2:])
    strides = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    groups = a.get("group", 1)
    out_pad = a.get("output_padding", [0] * n)
    full = [(spatial[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 for i in range(n)]
    auto_pad = a.get("auto_pad", "NOTSET")
    if "output_shape" in a or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = (
            list(a["output_shape"])[-n:]
            if "output_shape" in a
            else [s * st for s, st in zip(spatial, strides, strict=False)]
        )
        pads = []
        for i in range(n):
            total = full[i] + out_pad[i] - target[i]
            # onnxruntime: SAME_UPPER puts the smaller half first, anything else the larger half.
            head = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            pads.append((head, total - head))
    elif auto_pad == "VALID":
        pads = [(0, 0)] * n
    else:
        p = list(a.get("pads", [0] * (2 * n)))
        pads = [(p[i], p[i + n]) for i in range(n)]
        if all(p0 == p1 for p0, p1 in pads) and all(
            op_ < max(s, d) for op_, s, d in zip(out_pad, strides, dil, strict=False)
        ):
            return _CONV_T[n](x, w, b, strides, [p0 for p0, _ in pads], out_pad, groups, dil)
    # General case: full transposed convolution, then crop the pads (and grow by output_padding).
    y = _CONV_T[n](x, w, None, strides, 0, 0, groups, dil)
    y = F.pad(y, _torch_pad([(-p0, -p1 + op_) for (p0, p1), op_ in zip(pads, out_pad, strict=False)]))
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * n)
    return y


_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@check("MaxPool")
def _max_pool_check(a: Attrs) -> str | None:
    if a.num_outputs < 2:
        return None
    pads = list(a.get("pads", []))
    half = len(pads) // 2
    if a.get("storage_order", 0) or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return "Indices output with storage_order=1 or SAME auto_pad"
    if pads[:half] != pads[half:]:
        return "Indices output with asymmetric pads"
    return None


@op("MaxPool")
def _max_pool(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    x = ins[0]
    assert x is not None
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    strides = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    # onnxruntime sizes SAME pooling pads with the undilated kernel (unlike Conv); follow it.
    pads = _spatial_pads(a, list(x.shape[2:]), kernel, strides, [1] * n)
    ceil_mode = bool(a.get("ceil_mode", 0))
    native = all(
        p0 == p1 and p0 <= ((k - 1) * d + 1) // 2 for (p0, p1), k, d in zip(pads, kernel, dil, strict=False)
    )
    want_idx = a.num_outputs > 1
    if native:
        padding = [p0 for p0, _ in pads]
        if want_idx:
            y, idx = _MAXPOOL[n](x, kernel, strides, padding, dil, ceil_mode, return_indices=True)
            # torch indexes within each (n, c) plane; ONNX over the whole tensor (storage_order=0).
            plane = math.prod(x.shape[2:])
            base = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(
                [x.shape[0], x.shape[1]] + [1] * n
            )
            return y, idx + base * plane
        return _MAXPOOL[n](x, kernel, strides, padding, dil, ceil_mode)
    if want_idx:
        raise NotImplementedError("MaxPool indices output with asymmetric/large pads")
    x = F.pad(x, _torch_pad(pads), value=float("-inf"))
    return _MAXPOOL[n](x, kernel, strides, 0, dil, ceil_mode)


@op("AveragePool")
def _avg_pool(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    strides = a.get("strides", [1] * n)
    pads = _spatial_pads(a, list(x.shape[2:]), kernel, strides, [1] * n)
    ceil_mode = bool(a.get("ceil_mode", 0))
    include = bool(a.get("count_include_pad", 0))
    if all(p0 == p1 and p0 <= k // 2 for (p0, p1), k in zip(pads, kernel, strict=False)):
        return _AVGPOOL[n](x, kernel, strides, [p0 for p0, _ in pads], ceil_mode, include)
    tp = _torch_pad(pads)
    xp = F.pad(x, tp)
    if include:
        return _AVGPOOL[n](xp, kernel, strides, 0, ceil_mode, True)
    # Exclude padding from the divisor: sum of values / number of real (unpadded) elements.
    ones = F.pad(torch.ones_like(x[:1, :1]), tp)
    return _AVGPOOL[n](xp, kernel, strides, 0, ceil_mode, True) / _AVGPOOL[n](
        ones, kernel, strides, 0, ceil_mode, True
    )


@check("AveragePool")
def _avg_pool_check(a: Attrs) -> str | None:
    if any(d != 1 for d in a.get("dilations", [])):
        return "dilations != 1"
    return None


@op("GlobalAveragePool")
def _global_avg_pool(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def _global_max_pool(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# --------------------------------------------------------------------------- normalization


def _stash(x: Tensor) -> tuple[Tensor, torch.dtype]:
    """Normalize half-precision inputs in float32 (ONNX stash_type=1, the default)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float(), x.dtype
    return x, x.dtype


@op("BatchNormalization")
def _batch_norm(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, scale, bias, mean, var = ins[:5]
    assert x is not None
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


@check("BatchNormalization")
def _batch_norm_check(a: Attrs) -> str | None:
    if a.get("training_mode", 0) or a.num_outputs > 1:
        return "training_mode=1 (batch statistics) is not supported"
    return None


@op("InstanceNormalization")
def _instance_norm(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, scale, bias = ins[0], ins[1], ins[2]
    return F.instance_norm(x, weight=scale, bias=bias, eps=a.get("epsilon", 1e-5))  # type: ignore[arg-type]


@op("LayerNormalization")
def _layer_norm(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    x, scale, bias = ins[0], ins[1], _given(ins, 2)
    assert x is not None and scale is not None
    axis = _axis(a.get("axis", -1), x.dim())
    eps = a.get("epsilon", 1e-5)
    xs, dtype = _stash(x)
    norm_shape = list(x.shape[axis:])
    if (
        a.num_outputs == 1
        and list(scale.shape) == norm_shape
        and (bias is None or list(bias.shape) == norm_shape)
    ):
        y = F.layer_norm(xs, norm_shape, scale.to(xs.dtype), None if bias is None else bias.to(xs.dtype), eps)
        return y.to(dtype)
    dims = tuple(range(axis, x.dim()))
    mean = xs.mean(dim=dims, keepdim=True)
    inv = torch.rsqrt(((xs - mean) ** 2).mean(dim=dims, keepdim=True) + eps)
    y = (xs - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return y.to(dtype), mean, inv


@op("GroupNormalization")
def _group_norm(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, scale, bias = ins[0], ins[1], ins[2]
    assert x is not None and scale is not None and bias is not None
    groups = a["num_groups"]
    channels = x.shape[1]
    if scale.numel() != channels:
        # Opset 18 gives one scale per group; opset 21 one per channel.
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    xs, dtype = _stash(x)
    return F.group_norm(xs, groups, scale.to(xs.dtype), bias.to(xs.dtype), a.get("epsilon", 1e-5)).to(dtype)


@op("LpNormalization")
def _lp_norm(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    norm = torch.linalg.vector_norm(x, a.get("p", 2), dim=a.get("axis", -1), keepdim=True)
    return x / norm


@op("LRN")
def _lrn(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    size = a["size"]
    alpha, beta, bias = a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    front = (size - 1) // 2  # ONNX window: [c - floor((size-1)/2), c + ceil((size-1)/2)]
    sq = x * x
    pad_shape = list(x.shape)
    pad_shape[1] = front
    head = sq.new_zeros(pad_shape)
    pad_shape[1] = size - 1 - front
    tail = sq.new_zeros(pad_shape)
    window = torch.cat([head, sq, tail], dim=1).unfold(1, size, 1).sum(-1)
    return x / (bias + alpha / size * window) ** beta


# --------------------------------------------------------------------------- softmax family


def _softmax_like(fn: Callable[[Tensor, int], Tensor]) -> OpFn:
    def run(a: Attrs, ins: list[Tensor | None]) -> Tensor:
        x = ins[0]
        assert x is not None
        if a.opset >= 13:
            return fn(x, a.get("axis", -1))
        # Before opset 13 the input is coerced to 2-D at `axis` and normalized over the tail.
        axis = _axis(a.get("axis", 1), x.dim())
        flat = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
        return fn(flat, 1).reshape(x.shape)

    return run


def _hardmax(x: Tensor, axis: int) -> Tensor:
    return F.one_hot(x.argmax(axis), x.shape[axis]).movedim(-1, axis).to(x.dtype)


OPS["Softmax"] = _softmax_like(lambda x, ax: torch.softmax(x, ax))
OPS["LogSoftmax"] = _softmax_like(lambda x, ax: torch.log_softmax(x, ax))
OPS["Hardmax"] = _softmax_like(_hardmax)


# --------------------------------------------------------------------------- reductions


def _reduce(fn: Callable[[Tensor, list[int], bool], Tensor], keep_dtype: bool = False) -> OpFn:
    def run(a: Attrs, ins: list[Tensor | None]) -> Tensor:
        x = ins[0]
        assert x is not None
        axes = _axes_arg(a, ins, 1)
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        axes = [_axis(ax, x.dim()) for ax in axes]
        y = fn(x, axes, bool(a.get("keepdims", 1)))
        # torch promotes integer sums to int64; ONNX keeps the input type.
        return y.to(x.dtype) if keep_dtype and y.dtype != x.dtype else y

    return run


def _prod(x: Tensor, axes: list[int], keep: bool) -> Tensor:
    for ax in sorted(axes, reverse=True):
        x = x.prod(dim=ax, keepdim=keep)
    return x


OPS.update(
    {
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
)


def _arg_reduce(largest: bool) -> OpFn:
    def run(a: Attrs, ins: list[Tensor | None]) -> Tensor:
        x = ins[0]
        assert x is not None
        axis = _axis(a.get("axis", 0), x.dim())
        keep = bool(a.get("keepdims", 1))
        fn = torch.argmax if largest else torch.argmin
        if a.get("select_last_index", 0):
            return x.shape[axis] - 1 - fn(x.flip(axis), dim=axis, keepdim=keep)
        return fn(x, dim=axis, keepdim=keep)

    return run


OPS["ArgMax"] = _arg_reduce(True)
OPS["ArgMin"] = _arg_reduce(False)


@op("TopK")
def _topk(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    x, k = ins[0], ins[1]
    assert x is not None and k is not None
    values, idx = torch.topk(x, int(k.reshape(-1)[0]), a.get("axis", -1), bool(a.get("largest", 1)), True)
    return values, idx


@op("CumSum")
def _cumsum(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, ax = ins[0], ins[1]
    assert x is not None and ax is not None
    axis = _axis(int(ax.reshape(-1)[0]), x.dim())
    if a.get("reverse", 0):
        x = x.flip(axis)
    y = torch.cumsum(x, axis).to(x.dtype)
    if a.get("exclusive", 0):
        y = torch.cat([torch.zeros_like(y.narrow(axis, 0, 1)), y.narrow(axis, 0, y.shape[axis] - 1)], axis)
    return y.flip(axis) if a.get("reverse", 0) else y


# --------------------------------------------------------------------------- shape manipulation


@op("Shape")
def _shape(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    dims = list(x.shape)
    start, end = a.get("start", 0), a.get("end", None)
    # Shape values stay on the CPU: they feed Reshape/Slice arguments that are read on the host.
    return torch.tensor(dims[start:end], dtype=torch.int64)


@op("Size")
def _size(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return torch.tensor(x.numel(), dtype=torch.int64)


@op("Reshape")
def _reshape(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, shape_t = ins[0], ins[1]
    assert x is not None
    shape = _ints(shape_t) or []
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@op("Flatten")
def _flatten(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    axis = _axis(a.get("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@op("Transpose")
def _transpose(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    perm = a.get("perm", list(range(x.dim() - 1, -1, -1)))
    return x.permute(perm)


@op("Squeeze")
def _squeeze(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    axes = _axes_arg(a, ins, 1)
    if axes is None:
        return x.reshape([d for d in x.shape if d != 1])
    return x.squeeze(tuple(_axis(ax, x.dim()) for ax in axes)) if axes else x


@op("Unsqueeze")
def _unsqueeze(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    axes = _axes_arg(a, ins, 1) or []
    rank = x.dim() + len(axes)
    for ax in sorted(_axis(ax, rank) for ax in axes):
        x = x.unsqueeze(ax)
    return x


@op("Expand")
def _expand(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, shape = ins[0], ins[1]
    assert x is not None
    # ONNX Expand broadcasts both ways (a 1 in `shape` keeps the input's dim).
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape) or [])))


@op("Tile")
def _tile(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return x.repeat(_ints(ins[1]) or [])


@op("Concat")
def _concat(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return torch.cat([t for t in ins if t is not None], dim=a["axis"])


@op("Split")
def _split(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    x = ins[0]
    assert x is not None
    axis = _axis(a.get("axis", 0), x.dim())
    sizes = list(a["split"]) if "split" in a else _ints(_given(ins, 1))
    if not sizes:
        n = a.get("num_outputs", a.num_outputs)
        # Equal chunks; with opset 18 `num_outputs` the last one may be smaller.
        return tuple(torch.split(x, -(-x.shape[axis] // n), dim=axis))
    return tuple(torch.split(x, sizes, dim=axis))


@op("Slice")
def _slice(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    if a.opset < 10:
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(ins[1]) or [], _ints(ins[2]) or []
        axes = _ints(_given(ins, 3)) or list(range(len(starts)))
        steps = _ints(_given(ins, 4)) or [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    backwards: list[tuple[int, int, int, int]] = []
    for st, en, ax, sp in zip(starts, ends, axes, steps, strict=False):
        ax = _axis(ax, x.dim())
        if sp > 0:
            # Python slicing clamps exactly like ONNX for positive steps.
            index[ax] = slice(st, en, sp)
        else:
            backwards.append((st, en, ax, sp))
    y = x[tuple(index)]
    for st, en, ax, sp in backwards:
        dim = y.shape[ax]
        st = min(max(st + dim if st < 0 else st, 0), dim - 1)
        en = min(max(en + dim if en < 0 else en, -1), dim - 1)
        y = y.index_select(ax, torch.arange(st, en, sp, device=y.device))
    return y


def _fix_negative(idx: Tensor, dim: int | Tensor) -> Tensor:
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + dim, idx)


@op("Gather")
def _gather(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, idx = ins[0], ins[1]
    assert x is not None and idx is not None
    axis = _axis(a.get("axis", 0), x.dim())
    idx = _fix_negative(idx, x.shape[axis])
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1 :]))


@op("GatherElements")
def _gather_elements(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, idx = ins[0], ins[1]
    assert x is not None and idx is not None
    axis = _axis(a.get("axis", 0), x.dim())
    return torch.gather(x, axis, _fix_negative(idx, x.shape[axis]))


@op("GatherND")
def _gather_nd(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, idx = ins[0], ins[1]
    assert x is not None and idx is not None
    b = a.get("batch_dims", 0)
    k = idx.shape[-1]
    batch = list(x.shape[:b])
    nb = math.prod(batch)
    xf = x.reshape([nb] + list(x.shape[b:]))
    idxf = idx.to(torch.int64).reshape([nb, -1, k])
    bi = torch.arange(nb, device=x.device).reshape(nb, 1).expand(nb, idxf.shape[1])
    parts = [_fix_negative(idxf[..., i], xf.shape[1 + i]) for i in range(k)]
    out = xf[(bi, *parts)]
    return out.reshape(batch + list(idx.shape[b:-1]) + list(x.shape[b + k :]))


@op("ScatterND")
def _scatter_nd(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, idx, upd = ins[0], ins[1], ins[2]
    assert x is not None and idx is not None and upd is not None
    k = idx.shape[-1]
    parts = tuple(_fix_negative(idx[..., i], x.shape[i]) for i in range(k))
    # index_put (out of place) keeps autograd through both data and updates.
    return x.index_put(parts, upd.to(x.dtype), accumulate=a.get("reduction", "none") == "add")


@check("ScatterND")
def _scatter_nd_check(a: Attrs) -> str | None:
    red = a.get("reduction", "none")
    return None if red in ("none", "add") else f"reduction={red!r}"


_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@op("ScatterElements", "Scatter")
def _scatter_elements(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, idx, upd = ins[0], ins[1], ins[2]
    assert x is not None and idx is not None and upd is not None
    axis = _axis(a.get("axis", 0), x.dim())
    idx = _fix_negative(idx, x.shape[axis])
    red = a.get("reduction", "none")
    if red == "none":
        return torch.scatter(x, axis, idx, upd.to(x.dtype))
    return torch.scatter_reduce(x, axis, idx, upd.to(x.dtype), _SCATTER_REDUCE[red], include_self=True)


@op("ConstantOfShape")
def _constant_of_shape(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    shape = _ints(ins[0]) or []
    value = a.get("value")
    if value is None:
        return torch.zeros(shape, dtype=torch.float32)
    return value.reshape(()).to(ins[0].device if ins[0] is not None else "cpu").expand(shape).clone()


@op("Constant")
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


@check("Constant")
def _constant_check(a: Attrs) -> str | None:
    if not {"value", "value_float", "value_floats", "value_int", "value_ints"} & set(a):
        return f"attribute(s) {sorted(a)} (only numeric tensor constants are supported)"
    return None


@op("Range")
def _range(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    start, limit, delta = ins[0], ins[1], ins[2]
    assert start is not None and limit is not None and delta is not None
    s, lim, d = start.reshape(()), limit.reshape(()), delta.reshape(())
    if start.is_floating_point():
        # ONNX: n = max(ceil((limit - start) / delta), 0), values start + i * delta.
        n = max(int(math.ceil((lim.item() - s.item()) / d.item())), 0)
        return s + torch.arange(n, dtype=start.dtype, device=start.device) * d
    return torch.arange(int(s), int(lim), int(d), dtype=start.dtype, device=start.device)


@op("Cast")
def _cast(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return x.to(torch_dtype(a["to"]))


@op("CastLike")
def _cast_like(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, like = ins[0], ins[1]
    assert x is not None and like is not None
    return x.to(like.dtype)


@op("Trilu")
def _trilu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, k = ins[0], _given(ins, 1)
    assert x is not None
    diag = int(k.reshape(-1)[0]) if k is not None else 0
    return torch.triu(x, diag) if a.get("upper", 1) else torch.tril(x, diag)


@op("EyeLike")
def _eye_like(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    dtype = torch_dtype(a["dtype"]) if "dtype" in a else x.dtype
    eye = torch.ones(x.shape, dtype=dtype, device=x.device)
    return torch.triu(torch.tril(eye, a.get("k", 0)), a.get("k", 0))


@op("NonZero")
def _nonzero(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return torch.nonzero(x).t().contiguous()


@op("OneHot")
def _one_hot(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    idx, depth_t, values = ins[0], ins[1], ins[2]
    assert idx is not None and depth_t is not None and values is not None
    depth = int(depth_t.reshape(-1)[0])
    idx = _fix_negative(idx, depth)
    valid = (idx >= 0) & (idx < depth)
    hot = F.one_hot(idx.clamp(0, depth - 1), depth).to(torch.bool) & valid.unsqueeze(-1)
    out = torch.where(hot, values[1], values[0])
    return out.movedim(-1, _axis(a.get("axis", -1), out.dim()))


@op("DepthToSpace")
def _depth_to_space(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    bs = a["blocksize"]
    n, c, h, w = x.shape
    if a.get("mode", "DCR") == "DCR":
        y = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (bs * bs), h * bs, w * bs)


@op("SpaceToDepth")
def _space_to_depth(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    bs = a["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * bs * bs, h // bs, w // bs)


@op("Pad")
def _pad(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    rank = x.dim()
    mode = a.get("mode", "constant")
    if a.opset < 11:
        raw, value = list(a["pads"]), a.get("value", 0.0)
        axes = list(range(rank))
    else:
        raw = _ints(ins[1]) or []
        cv = _given(ins, 2)
        value = cv.reshape(()) if cv is not None and cv.numel() else 0
        axes_in = _ints(_given(ins, 3))
        axes = [_axis(ax, rank) for ax in axes_in] if axes_in else list(range(rank))
    n = len(axes)
    per_dim = [(0, 0)] * rank
    for i, ax in enumerate(axes):
        per_dim[ax] = (raw[i], raw[i + n])
    if mode == "constant":
        if isinstance(value, Tensor):
            value = value.item()
        return F.pad(x, _torch_pad(per_dim), value=value)
    # reflect / edge / wrap: gather along each padded axis with an index map (exact, any rank).
    for ax, (b, e) in enumerate(per_dim):
        if b == 0 and e == 0:
            continue
        dim = x.shape[ax]
        pos = torch.arange(-b, dim + e, device=x.device)
        if mode == "edge":
            src = pos.clamp(0, dim - 1)
        elif mode == "wrap":
            src = pos.remainder(dim)
        else:  # reflect: mirror without repeating the edge element
            period = 2 * (dim - 1)
            m = pos.abs().remainder(period) if period else torch.zeros_like(pos)
            src = torch.where(m >= dim, period - m, m)
        x = x.index_select(ax, src)
    return x


# --------------------------------------------------------------------------- Resize / Upsample


def _round_half_away(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _source_coords(mode: str, out_len: int, in_len: int, scale: Tensor, roi: tuple[float, float]) -> Tensor:
    """Output positions mapped to input coordinates, in float32 like onnxruntime."""
    i = torch.arange(out_len, dtype=torch.float32)
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out_len / (scale * in_len)
        offset = in_len / 2.0 * (1 - adjustment)
        return offset + (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out_len > 1 else torch.zeros_like(i)
    if mode == "align_corners":
        return torch.zeros_like(i) if out_len == 1 else i * (in_len - 1) / (out_len - 1)
    if mode == "asymmetric":
        return i / scale
    if mode == "tf_half_pixel_for_nn":
        return (i + 0.5) / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if out_len > 1:
            return start * (in_len - 1) + i * (end - start) * (in_len - 1) / (out_len - 1)
        return torch.full_like(i, 0.5 * (start + end) * (in_len - 1))
    raise NotImplementedError(f"coordinate_transformation_mode={mode!r}")


def _cubic_weights(t: Tensor, a: float) -> list[Tensor]:
    def near(s: Tensor) -> Tensor:  # |s| <= 1
        return ((a + 2) * s - (a + 3)) * s * s + 1

    def far(s: Tensor) -> Tensor:  # 1 < |s| < 2
        return ((a * s - 5 * a) * s + 8 * a) * s - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _along(w: Tensor, axis: int, rank: int) -> Tensor:
    shape = [1] * rank
    shape[axis] = -1
    return w.reshape(shape)


def _resize_axis(x: Tensor, axis: int, coords: Tensor, a: Attrs, mode: str, downsample: bool) -> Tensor:
    in_len = x.shape[axis]
    rank = x.dim()
    coords = coords.to(x.device)
    crop = a.get("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize"
    if mode == "nearest":
        nm = a.get("nearest_mode", "round_prefer_floor")
        if a.opset < 11 or a.op_type == "Upsample":
            # Pre-opset-11 onnxruntime: floor when upsampling, ceil when downsampling.
            idx = torch.ceil(coords) if downsample else torch.floor(coords)
        elif nm == "round_prefer_floor":
            idx = torch.where(
                coords == torch.trunc(coords) + 0.5, torch.floor(coords), _round_half_away(coords)
            )
        elif nm == "round_prefer_ceil":
            idx = torch.where(
                coords == torch.trunc(coords) + 0.5, torch.ceil(coords), _round_half_away(coords)
            )
        elif nm == "floor":
            idx = torch.floor(coords)
        else:
            idx = torch.ceil(coords)
        y = x.index_select(axis, idx.to(torch.int64).clamp(0, in_len - 1))
    elif mode == "linear":
        c = coords if crop else coords.clamp(0, in_len - 1)
        i0 = torch.floor(c).to(torch.int64).clamp(0, in_len - 1)
        i1 = (i0 + 1).clamp(max=in_len - 1)
        w1 = (c - i0.to(c.dtype)).to(x.dtype)
        y = x.index_select(axis, i0) * _along(1 - w1, axis, rank) + x.index_select(axis, i1) * _along(
            w1, axis, rank
        )
    else:  # cubic
        i0 = torch.floor(coords)
        t = coords - i0
        weights = _cubic_weights(t, a.get("cubic_coeff_a", -0.75))
        taps = [(i0 + k).to(torch.int64) for k in (-1, 0, 1, 2)]
        if a.get("exclude_outside", 0):
            weights = [
                w * ((tp >= 0) & (tp < in_len)).to(w.dtype) for w, tp in zip(weights, taps, strict=False)
            ]
            total = functools.reduce(torch.add, weights)
            weights = [w / total for w in weights]
        y = functools.reduce(
            torch.add,
            [
                x.index_select(axis, tp.clamp(0, in_len - 1)) * _along(w.to(x.dtype), axis, rank)
                for w, tp in zip(weights, taps, strict=False)
            ],
        )
    if crop:
        outside = (coords < 0) | (coords > in_len - 1)
        y = torch.where(_along(outside, axis, rank), a.get("extrapolation_value", 0.0), y)
    return y


@op("Resize", "Upsample")
def _resize(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    rank = x.dim()
    mode = a.get("mode", "nearest")
    mode = {"bilinear": "linear", "trilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    roi_t: Tensor | None = None
    sizes_t: Tensor | None = None
    if a.op_type == "Upsample" or a.opset < 11:
        scales_t = _given(ins, 1)
        scales_l = list(a["scales"]) if scales_t is None else scales_t.tolist()
        coord_mode = "asymmetric"
    else:
        roi_t, scales_t, sizes_t = _given(ins, 1), _given(ins, 2), _given(ins, 3)
        scales_l = scales_t.tolist() if scales_t is not None and scales_t.numel() else None
        coord_mode = a.get("coordinate_transformation_mode", "half_pixel")
    axes = [_axis(ax, rank) for ax in a.get("axes", range(rank))]
    in_sizes = [x.shape[ax] for ax in axes]
    if sizes_t is not None and sizes_t.numel():
        out_sizes = _ints(sizes_t) or []
        policy = a.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            ratios = [o / i for o, i in zip(out_sizes, in_sizes, strict=False)]
            s = min(ratios) if policy == "not_larger" else max(ratios)
            out_sizes = [int(math.floor(s * i + 0.5)) for i in in_sizes]
            scales = [torch.tensor(s, dtype=torch.float32)] * len(axes)
        else:
            scales = [
                torch.tensor(float(o), dtype=torch.float32) / torch.tensor(float(i), dtype=torch.float32)
                for o, i in zip(out_sizes, in_sizes, strict=False)
            ]
    else:
        assert scales_l is not None
        scales = [torch.tensor(s, dtype=torch.float32) for s in scales_l]
        # onnxruntime: output dim = (int64)(float scale * input dim)
        out_sizes = [
            int((np.float32(s) * np.float32(i)).item()) for s, i in zip(scales_l, in_sizes, strict=False)
        ]
    roi = roi_t.tolist() if roi_t is not None and roi_t.numel() else None
    identity_modes = (
        "half_pixel",
        "pytorch_half_pixel",
        "align_corners",
        "asymmetric",
        "half_pixel_symmetric",
    )
    y = x
    for j, ax in enumerate(axes):
        in_len, out_len, scale = in_sizes[j], out_sizes[j], scales[j]
        if out_len == in_len and float(scale) == 1.0 and coord_mode in identity_modes:
            continue
        span = (0.0, 1.0)
        if roi is not None and coord_mode == "tf_crop_and_resize":
            n = len(roi) // 2
            k = j if n == len(axes) else ax
            span = (roi[k], roi[k + n])
        coords = _source_coords(coord_mode, out_len, in_len, scale, span)
        y = _resize_axis(y, ax, coords, a, mode, downsample=float(scale) < 1.0)
    return y


@check("Resize")
def _resize_check(a: Attrs) -> str | None:
    if a.get("antialias", 0) and a.get("mode", "nearest") != "nearest":
        return "antialias=1"
    return None


@op("GridSample")
def _grid_sample(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, grid = ins[0], ins[1]
    assert x is not None and grid is not None
    mode = {"linear": "bilinear", "cubic": "bicubic"}.get(
        a.get("mode", "bilinear"), a.get("mode", "bilinear")
    )
    return F.grid_sample(
        x, grid.to(x.dtype), mode, a.get("padding_mode", "zeros"), bool(a.get("align_corners", 0))
    )


@op("RMSNormalization")
def _rms_norm(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, scale = ins[0], ins[1]
    assert x is not None and scale is not None
    axis = _axis(a.get("axis", -1), x.dim())
    xs, dtype = _stash(x)
    dims = tuple(range(axis, x.dim()))
    y = xs * torch.rsqrt((xs * xs).mean(dim=dims, keepdim=True) + a.get("epsilon", 1e-5))
    return (y * scale.to(xs.dtype)).to(dtype)


# --------------------------------------------------------------------------- sequences
# The TorchScript exporter emits these for Python lists of tensors. A sequence value is a Python
# list of tensors; a sequence op returns it wrapped in a 1-tuple so the executor does not mistake
# the list for several outputs.


@op("SequenceConstruct")
def _sequence_construct(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    return ([t for t in ins if t is not None],)  # type: ignore[return-value]


@op("SequenceEmpty")
def _sequence_empty(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    return ([],)  # type: ignore[return-value]


@op("SequenceAt")
def _sequence_at(a: Attrs, ins: list[Any]) -> Tensor:
    seq, pos = ins[0], ins[1]
    return seq[int(pos.reshape(-1)[0])]


@op("SequenceLength")
def _sequence_length(a: Attrs, ins: list[Any]) -> Tensor:
    return torch.tensor(len(ins[0]), dtype=torch.int64)


@op("SequenceInsert")
def _sequence_insert(a: Attrs, ins: list[Any]) -> OpResult:
    seq = list(ins[0])
    pos = _given(ins, 2)
    seq.insert(len(seq) if pos is None else int(pos.reshape(-1)[0]), ins[1])
    return (seq,)  # type: ignore[return-value]


@op("SequenceErase")
def _sequence_erase(a: Attrs, ins: list[Any]) -> OpResult:
    seq = list(ins[0])
    pos = _given(ins, 1)
    del seq[-1 if pos is None else int(pos.reshape(-1)[0])]
    return (seq,)  # type: ignore[return-value]


@op("SplitToSequence")
def _split_to_sequence(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    x, split = ins[0], _given(ins, 1)
    assert x is not None
    axis = _axis(a.get("axis", 0), x.dim())
    if split is None:
        parts = list(torch.split(x, 1, dim=axis))
        if not a.get("keepdims", 1):
            parts = [p.squeeze(axis) for p in parts]
    elif split.dim() == 0:
        parts = list(torch.split(x, int(split), dim=axis))
    else:
        parts = list(torch.split(x, _ints(split) or [], dim=axis))
    return (parts,)  # type: ignore[return-value]


@op("ConcatFromSequence")
def _concat_from_sequence(a: Attrs, ins: list[Any]) -> Tensor:
    seq = ins[0]
    if a.get("new_axis", 0):
        return torch.stack(seq, dim=_axis(a["axis"], seq[0].dim() + 1))
    return torch.cat(seq, dim=a["axis"])


@op("If")
def _if(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    # Subgraphs need the enclosing scope: the executor runs If itself (see OnnxTwin._run_if).
    raise RuntimeError("If is executed by the OnnxTwin executor, not through the op table")
