"""Magnitude criteria: the norm of each channel's weights at every place of the group."""

from __future__ import annotations

import numpy as np

from pruning_core.groups import Group
from pruning_core.importance.registry import ScoreContext, register


def _per_index(ctx: ScoreContext, tensor: str, axis: int, p: int) -> np.ndarray:
    """sum |w|^p over all axes but ``axis``; cached: a weight is a place of two groups (rows, columns)."""
    key = f"magnitude:{tensor}:{axis}:{p}"
    if key not in ctx.cache:
        w = np.abs(np.asarray(ctx.analysis.graph.inits[tensor], dtype=np.float32))
        if p != 1:
            w = w**p
        others = tuple(a for a in range(w.ndim) if a != axis)
        ctx.cache[key] = w.sum(axis=others, dtype=np.float64)
    return ctx.cache[key]


def _place_norms(ctx: ScoreContext, grp: Group, p: int) -> np.ndarray:
    rows = []
    for place in grp.places:
        per_index = _per_index(ctx, place.tensor, place.axis, p)
        per_channel = per_index[place.index].sum(axis=1)  # block of k indices per channel
        rows.append(per_channel ** (1.0 / p))
    return np.stack(rows)


@register("l1", doc="L1 norm of the group's weights (data-free)")
def l1(ctx: ScoreContext, grp: Group) -> np.ndarray:
    return _place_norms(ctx, grp, 1)


@register("l2", doc="L2 norm of the group's weights (data-free)")
def l2(ctx: ScoreContext, grp: Group) -> np.ndarray:
    return _place_norms(ctx, grp, 2)
