"""Shape and data movement: Shape, Reshape, Transpose, Concat, Split, Slice, Pad..."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pruning_core.twin.ops.common import axes_arg, given, ints, norm_axis, torch_pad
from pruning_core.twin.ops.table import OPS, Attrs, OpResult, Tensor


@OPS.register("Shape")
def _shape(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    dims = list(x.shape)
    start, end = a.get("start", 0), a.get("end", None)
    # Shape values stay on the CPU: they feed Reshape/Slice arguments that are read on the host.
    return torch.tensor(dims[start:end], dtype=torch.int64)


@OPS.register("Size")
def _size(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return torch.tensor(x.numel(), dtype=torch.int64)


@OPS.register("Reshape")
def _reshape(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, shape_t = ins[0], ins[1]
    assert x is not None
    shape = ints(shape_t) or []
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@OPS.register("Flatten")
def _flatten(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    axis = norm_axis(a.get("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@OPS.register("Transpose")
def _transpose(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    perm = a.get("perm", list(range(x.dim() - 1, -1, -1)))
    return x.permute(perm)


@OPS.register("Squeeze")
def _squeeze(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    axes = axes_arg(a, ins, 1)
    if axes is None:
        return x.reshape([d for d in x.shape if d != 1])
    return x.squeeze(tuple(norm_axis(ax, x.dim()) for ax in axes)) if axes else x


@OPS.register("Unsqueeze")
def _unsqueeze(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    axes = axes_arg(a, ins, 1) or []
    rank = x.dim() + len(axes)
    for ax in sorted(norm_axis(ax, rank) for ax in axes):
        x = x.unsqueeze(ax)
    return x


@OPS.register("Expand")
def _expand(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, shape = ins[0], ins[1]
    assert x is not None
    # ONNX Expand broadcasts both ways (a 1 in `shape` keeps the input's dim).
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape) or [])))


@OPS.register("Tile")
def _tile(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return x.repeat(ints(ins[1]) or [])


@OPS.register("Concat")
def _concat(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return torch.cat([t for t in ins if t is not None], dim=a["axis"])


@OPS.register("Split")
def _split(a: Attrs, ins: list[Tensor | None]) -> OpResult:
    x = ins[0]
    assert x is not None
    axis = norm_axis(a.get("axis", 0), x.dim())
    sizes = list(a["split"]) if "split" in a else ints(given(ins, 1))
    if not sizes:
        n = a.get("num_outputs", a.num_outputs)
        # Equal chunks; with opset 18 `num_outputs` the last one may be smaller.
        return tuple(torch.split(x, -(-x.shape[axis] // n), dim=axis))
    return tuple(torch.split(x, sizes, dim=axis))


@OPS.register("Slice")
def _slice(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    if a.opset < 10:
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = ints(ins[1]) or [], ints(ins[2]) or []
        axes = ints(given(ins, 3)) or list(range(len(starts)))
        steps = ints(given(ins, 4)) or [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    backwards: list[tuple[int, int, int, int]] = []
    for st, en, ax, sp in zip(starts, ends, axes, steps, strict=False):
        ax = norm_axis(ax, x.dim())
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


def _blocks(a: Attrs, ins: list[Tensor | None]) -> tuple[Tensor, int, int, int, int, int]:
    x = ins[0]
    assert x is not None
    n, c, h, w = x.shape
    return x, int(a["blocksize"]), n, c, h, w


@OPS.register("DepthToSpace")
def _depth_to_space(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, bs, n, c, h, w = _blocks(a, ins)
    if a.get("mode", "DCR") == "DCR":
        y = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (bs * bs), h * bs, w * bs)


@OPS.register("SpaceToDepth")
def _space_to_depth(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, bs, n, c, h, w = _blocks(a, ins)
    y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * bs * bs, h // bs, w // bs)


@OPS.register("Pad")
def _pad(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    rank = x.dim()
    mode = a.get("mode", "constant")
    if a.opset < 11:
        raw, value = list(a["pads"]), a.get("value", 0.0)
        axes = list(range(rank))
    else:
        raw = ints(ins[1]) or []
        cv = given(ins, 2)
        value = cv.reshape(()) if cv is not None and cv.numel() else 0
        axes_in = ints(given(ins, 3))
        axes = [norm_axis(ax, rank) for ax in axes_in] if axes_in else list(range(rank))
    n = len(axes)
    per_dim = [(0, 0)] * rank
    for i, ax in enumerate(axes):
        per_dim[ax] = (raw[i], raw[i + n])
    if mode == "constant":
        if isinstance(value, Tensor):
            value = value.item()
        return F.pad(x, torch_pad(per_dim), value=value)
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
