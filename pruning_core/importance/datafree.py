"""Data-free criteria that read only the weights: bn_scale, random, fpgm, lamp.

All return per-place scores ``[n_places, n_channels]``; the registry lifts them to groups like
every other criterion. Places that do not apply to a criterion (e.g. consumer columns for fpgm,
which is defined on filters) are left out, so the group reduction runs over the places that mean
something for it.
"""

from __future__ import annotations

import numpy as np

from pruning_core.analysis.groups import Group, Place
from pruning_core.importance.magnitude import _place_norms
from pruning_core.importance.registry import ScoreContext, register

# Normalization ops whose input 1 is a per-channel scale (gamma).
NORM_SCALE_INPUT = {"BatchNormalization": 1, "LayerNormalization": 1, "GroupNormalization": 1,
                    "InstanceNormalization": 1, "SimplifiedLayerNormalization": 1}


def channel_rows(w: np.ndarray, place: Place) -> np.ndarray:
    """[n_channels, k * rest]: every channel's weights at this place, one row per channel."""
    moved = np.moveaxis(np.asarray(w, dtype=np.float64), place.axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    return flat[place.index].reshape(place.index.shape[0], -1)


def _producers(grp: Group) -> list[Place]:
    return [p for p in grp.places if p.producer] or list(grp.places)


def _is_norm_scale(ctx: ScoreContext, tensor: str) -> bool:
    users = ctx.analysis.graph.consumers.get(tensor, [])
    return bool(users) and all(NORM_SCALE_INPUT.get(n.op_type) == i for n, i in users)


@register("bn_scale")
def bn_scale(ctx: ScoreContext, grp: Group) -> np.ndarray:
    rows = [np.abs(channel_rows(ctx.weight(p), p)).sum(axis=1)
            for p in grp.places if _is_norm_scale(ctx, p.tensor)]
    if not rows:  # no norm in this group (e.g. a Linear followed by GELU): weight magnitude instead
        return _place_norms(ctx, grp, 2)
    return np.stack(rows)


@register("random")
def random_scores(ctx: ScoreContext, grp: Group) -> np.ndarray:
    # seeded per (seed, group) so the draw for one group does not depend on how many came before
    rng = np.random.default_rng([int(ctx.spec.seed), int(grp.id)])
    return rng.random(grp.size)[None]


def _distance_sums(x: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """sum_j ||x_i - x_j|| for every row i, in row chunks (no [n, n, d] tensor)."""
    sq = (x * x).sum(axis=1)
    out = np.empty(len(x))
    for s in range(0, len(x), chunk):
        d2 = sq[s:s + chunk, None] + sq[None] - 2.0 * x[s:s + chunk] @ x.T
        out[s:s + chunk] = np.sqrt(np.maximum(d2, 0.0)).sum(axis=1)
    return out


@register("fpgm")
def fpgm(ctx: ScoreContext, grp: Group) -> np.ndarray:
    # The geometric median of the filters minimizes the summed distance to all of them; filters
    # with the smallest summed distance are the closest to it and can be replaced by the others.
    return np.stack([_distance_sums(channel_rows(ctx.weight(p), p)) for p in _producers(grp)])


@register("lamp")
def lamp(ctx: ScoreContext, grp: Group) -> np.ndarray:
    rows = []
    for p in _producers(grp):
        e = (channel_rows(ctx.weight(p), p) ** 2).sum(axis=1)
        order = np.argsort(e, kind="stable")
        tail = np.cumsum(e[order][::-1])[::-1]  # sum over channels ranked at or above each one
        s = np.empty_like(e)
        s[order] = e[order] / np.maximum(tail, np.finfo(np.float64).tiny)
        rows.append(s)
    return np.stack(rows)
