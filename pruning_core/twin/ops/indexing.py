"""Indexing: Gather*, Scatter*, OneHot, NonZero (negative indices count from the end)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pruning_core.twin.ops.common import norm_axis
from pruning_core.twin.ops.table import CHECKS, OPS, Attrs, Tensor


def _fix_negative(idx: Tensor, dim: int | Tensor) -> Tensor:
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + dim, idx)


@OPS.register("Gather")
def _gather(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, idx = ins[0], ins[1]
    assert x is not None and idx is not None
    axis = norm_axis(a.get("axis", 0), x.dim())
    idx = _fix_negative(idx, x.shape[axis])
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1 :]))


@OPS.register("GatherElements")
def _gather_elements(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, idx = ins[0], ins[1]
    assert x is not None and idx is not None
    axis = norm_axis(a.get("axis", 0), x.dim())
    return torch.gather(x, axis, _fix_negative(idx, x.shape[axis]))


@OPS.register("GatherND")
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


@OPS.register("ScatterND")
def _scatter_nd(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, idx, upd = ins[0], ins[1], ins[2]
    assert x is not None and idx is not None and upd is not None
    k = idx.shape[-1]
    parts = tuple(_fix_negative(idx[..., i], x.shape[i]) for i in range(k))
    # index_put (out of place) keeps autograd through both data and updates.
    return x.index_put(parts, upd.to(x.dtype), accumulate=a.get("reduction", "none") == "add")


@CHECKS.register("ScatterND")
def _scatter_nd_check(a: Attrs) -> str | None:
    red = a.get("reduction", "none")
    return None if red in ("none", "add") else f"reduction={red!r}"


_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@OPS.register("ScatterElements", "Scatter")
def _scatter_elements(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, idx, upd = ins[0], ins[1], ins[2]
    assert x is not None and idx is not None and upd is not None
    axis = norm_axis(a.get("axis", 0), x.dim())
    idx = _fix_negative(idx, x.shape[axis])
    red = a.get("reduction", "none")
    if red == "none":
        return torch.scatter(x, axis, idx, upd.to(x.dtype))
    return torch.scatter_reduce(x, axis, idx, upd.to(x.dtype), _SCATTER_REDUCE[red], include_self=True)


@OPS.register("OneHot")
def _one_hot(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    idx, depth_t, values = ins[0], ins[1], ins[2]
    assert idx is not None and depth_t is not None and values is not None
    depth = int(depth_t.reshape(-1)[0])
    idx = _fix_negative(idx, depth)
    valid = (idx >= 0) & (idx < depth)
    hot = F.one_hot(idx.clamp(0, depth - 1), depth).to(torch.bool) & valid.unsqueeze(-1)
    out = torch.where(hot, values[1], values[0])
    return out.movedim(-1, norm_axis(a.get("axis", -1), out.dim()))


@OPS.register("NonZero")
def _nonzero(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x = ins[0]
    assert x is not None
    return torch.nonzero(x).t().contiguous()
