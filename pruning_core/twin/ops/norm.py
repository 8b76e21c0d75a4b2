"""Normalizations: Batch, Instance, Layer, Group, RMS, Lp, LRN."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pruning_core.twin.ops.common import given, norm_axis
from pruning_core.twin.ops.table import CHECKS, OPS, Attrs, OpResult, Tensor


def _stash(x: Tensor) -> tuple[Tensor, torch.dtype]:
    """Normalize half-precision inputs in float32 (ONNX stash_type=1, the default)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float(), x.dtype
    return x, x.dtype


@OPS.register("BatchNormalization")
def _batch_norm(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, scale, bias, mean, var = ins[:5]
    assert x is not None
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


@CHECKS.register("BatchNormalization")
def _batch_norm_check(a: Attrs) -> str | None:
    if a.get("training_mode", 0) or a.num_outputs > 1:
        return "training_mode=1 (batch statistics) is not supported"
    return None


@OPS.register("InstanceNormalization")
def _instance_norm(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, scale, bias = ins[0], ins[1], ins[2]
    return F.instance_norm(x, weight=scale, bias=bias, eps=a.get("epsilon", 1e-5))  # type: ignore[arg-type]


@OPS.register("LayerNormalization")
def _layer_norm(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    x, scale, bias = ins[0], ins[1], given(ins, 2)
    assert x is not None and scale is not None
    axis = norm_axis(a.get("axis", -1), x.dim())
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


@OPS.register("GroupNormalization")
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


@OPS.register("RMSNormalization")
def _rms_norm(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, scale = ins[0], ins[1]
    assert x is not None and scale is not None
    axis = norm_axis(a.get("axis", -1), x.dim())
    xs, dtype = _stash(x)
    dims = tuple(range(axis, x.dim()))
    y = xs * torch.rsqrt((xs * xs).mean(dim=dims, keepdim=True) + a.get("epsilon", 1e-5))
    return (y * scale.to(xs.dtype)).to(dtype)


@OPS.register("LpNormalization")
def _lp_norm(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    norm = torch.linalg.vector_norm(x, a.get("p", 2), dim=a.get("axis", -1), keepdim=True)
    return x / norm


@OPS.register("LRN")
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
