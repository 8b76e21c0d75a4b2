"""Resize / Upsample (coordinate rules and rounding of onnxruntime's CPU kernel) and
GridSample."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from pruning_core.twin.ops.common import given, ints, norm_axis
from pruning_core.twin.ops.table import CHECKS, OPS, Attrs, Tensor


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


@OPS.register("Resize", "Upsample")
def _resize(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    rank = x.dim()
    mode = a.get("mode", "nearest")
    mode = {"bilinear": "linear", "trilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    roi_t: Tensor | None = None
    sizes_t: Tensor | None = None
    if a.op_type == "Upsample" or a.opset < 11:
        scales_t = given(ins, 1)
        scales_l = list(a["scales"]) if scales_t is None else scales_t.tolist()
        coord_mode = "asymmetric"
    else:
        roi_t, scales_t, sizes_t = given(ins, 1), given(ins, 2), given(ins, 3)
        scales_l = scales_t.tolist() if scales_t is not None and scales_t.numel() else None
        coord_mode = a.get("coordinate_transformation_mode", "half_pixel")
    axes = [norm_axis(ax, rank) for ax in a.get("axes", range(rank))]
    in_sizes = [x.shape[ax] for ax in axes]
    if sizes_t is not None and sizes_t.numel():
        out_sizes = ints(sizes_t) or []
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


@CHECKS.register("Resize")
def _resize_check(a: Attrs) -> str | None:
    if a.get("antialias", 0) and a.get("mode", "nearest") != "nearest":
        return "antialias=1"
    return None


@OPS.register("GridSample")
def _grid_sample(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, grid = ins[0], ins[1]
    assert x is not None and grid is not None
    mode = {"linear": "bilinear", "cubic": "bicubic"}.get(
        a.get("mode", "bilinear"), a.get("mode", "bilinear")
    )
    return F.grid_sample(
        x, grid.to(x.dtype), mode, a.get("padding_mode", "zeros"), bool(a.get("align_corners", 0))
    )
