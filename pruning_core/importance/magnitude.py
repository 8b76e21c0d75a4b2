"""Magnitude criteria: the norm of each channel's weights at every place of the group."""

from __future__ import annotations

import numpy as np

from pruning_core.analysis.groups import Group
from pruning_core.importance.registry import ScoreContext, register
from pruning_core.ir.quant import float_value


def _per_index(ctx: ScoreContext, tensor: str, axis: int, p: int) -> np.ndarray:
    """sum |w|^p over all axes but ``axis``; cached: a weight is a place of two groups (rows, columns)."""
    key = f"magnitude:{tensor}:{axis}:{p}"
    if key not in ctx.cache:
        ctx.cache[key] = _abs_pow_sum(float_value(ctx.analysis.graph, tensor), axis, p)
    return ctx.cache[key]


CHUNK = 1 << 18  # elements: |w|^p goes through one small reused buffer, not a weight-sized temporary


def _abs_pow_sum(w: np.ndarray, axis: int, p: int) -> np.ndarray:
    if w.ndim == 0 or w.size == 0:
        return np.abs(np.asarray(w, np.float64)).reshape(-1)[:1] ** p
    others = tuple(a for a in range(w.ndim) if a != axis)
    step = max(1, CHUNK // max(1, w[0].size))
    buf = np.empty((min(step, w.shape[0]),) + w.shape[1:], dtype=np.float32)
    out = np.zeros(w.shape[axis], dtype=np.float64)
    for s in range(0, w.shape[0], step):
        blk = w[s:s + step]
        a = buf[: len(blk)]
        np.abs(blk, out=a, casting="unsafe")
        if p != 1:
            np.power(a, p, out=a)
        part = a.sum(axis=others, dtype=np.float64) if others else a.astype(np.float64)
        if axis == 0:
            out[s:s + len(blk)] = part
        else:
            out += part
    return out


def _place_norms(ctx: ScoreContext, grp: Group, p: int) -> np.ndarray:
    rows = []
    for place in grp.places:
        per_index = _per_index(ctx, place.tensor, place.axis, p)
        per_channel = per_index[place.index].sum(axis=1)  # block of k indices per channel
        rows.append(per_channel ** (1.0 / p))
    return np.stack(rows)


@register("l1")
def l1(ctx: ScoreContext, grp: Group) -> np.ndarray:
    return _place_norms(ctx, grp, 1)


@register("l2")
def l2(ctx: ScoreContext, grp: Group) -> np.ndarray:
    return _place_norms(ctx, grp, 2)
