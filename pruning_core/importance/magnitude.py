"""Magnitude criteria: the norm of each channel's weights at every place of the group."""

from __future__ import annotations

import numpy as np

from pruning_core.groups import Group
from pruning_core.importance.registry import ScoreContext, register


def _place_norms(ctx: ScoreContext, grp: Group, p: int) -> np.ndarray:
    rows = []
    for place in grp.places:
        w = np.asarray(ctx.weight(place), dtype=np.float64)
        moved = np.moveaxis(w, place.axis, 0)  # [dim, ...]
        per_index = np.abs(moved.reshape(moved.shape[0], -1)) ** p
        per_index = per_index.sum(axis=1)
        per_channel = per_index[place.index].sum(axis=1)  # block of k indices per channel
        rows.append(per_channel ** (1.0 / p))
    return np.stack(rows)


@register("l1", doc="L1 norm of the group's weights (data-free)")
def l1(ctx: ScoreContext, grp: Group) -> np.ndarray:
    return _place_norms(ctx, grp, 1)


@register("l2", doc="L2 norm of the group's weights (data-free)")
def l2(ctx: ScoreContext, grp: Group) -> np.ndarray:
    return _place_norms(ctx, grp, 2)
