"""Convolution and pooling, with ONNX's padding rules (auto_pad, asymmetric pads) resolved
like onnxruntime's."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pruning_core.twin.ops.common import given, torch_pad
from pruning_core.twin.ops.table import CHECKS, OPS, Attrs, OpResult, Tensor


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


@OPS.register("Conv")
def _conv(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, w, b = ins[0], ins[1], given(ins, 2)
    assert x is not None and w is not None
    n = w.dim() - 2
    kernel = list(w.shape[2:])
    strides = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    pads = _spatial_pads(a, list(x.shape[2:]), kernel, strides, dil)
    if all(p0 == p1 for p0, p1 in pads):
        padding: list[int] | int = [p0 for p0, _ in pads]
    else:  # torch only pads symmetrically: pad explicitly, convolve without padding
        x = F.pad(x, torch_pad(pads))
        padding = 0
    return _CONV[n](x, w, b, strides, padding, dil, a.get("group", 1))


@OPS.register("ConvTranspose")
def _conv_transpose(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, w, b = ins[0], ins[1], given(ins, 2)
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
    y = F.pad(y, torch_pad([(-p0, -p1 + op_) for (p0, p1), op_ in zip(pads, out_pad, strict=False)]))
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * n)
    return y


_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@CHECKS.register("MaxPool")
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


@OPS.register("MaxPool")
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
    x = F.pad(x, torch_pad(pads), value=float("-inf"))
    return _MAXPOOL[n](x, kernel, strides, 0, dil, ceil_mode)


@OPS.register("AveragePool")
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
    tp = torch_pad(pads)
    xp = F.pad(x, tp)
    if include:
        return _AVGPOOL[n](xp, kernel, strides, 0, ceil_mode, True)
    # Exclude padding from the divisor: sum of values / number of real (unpadded) elements.
    ones = F.pad(torch.ones_like(x[:1, :1]), tp)
    return _AVGPOOL[n](xp, kernel, strides, 0, ceil_mode, True) / _AVGPOOL[n](
        ones, kernel, strides, 0, ceil_mode, True
    )


@CHECKS.register("AveragePool")
def _avg_pool_check(a: Attrs) -> str | None:
    if any(d != 1 for d in a.get("dilations", [])):
        return "dilations != 1"
    return None


@OPS.register("GlobalAveragePool")
def _global_avg_pool(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@OPS.register("GlobalMaxPool")
def _global_max_pool(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)
