"""Targets -> which channels go.

Every candidate group orders its removable channels by score; ``global`` scope merges all groups
into one ranking (scores are normalized within groups), ``local`` removes the same share of every
group. One monotone knob (prefix length / share) is bisected until the target is met: a fraction
of ``channels`` (of the prunable groups' channels), ``params`` or ``flops`` (MACs) to remove,
measured exactly with the analysis' shape model."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import numpy as np

from pruning_core.errors import UnreachableTargetError
from pruning_core.groups import Analysis, Group


def candidates(an: Analysis, ignore: list[str]) -> list[Group]:
    def ignored(grp: Group) -> bool:
        return any(fnmatch.fnmatch(p.tensor, pat) for p in grp.places for pat in ignore)

    return [g for g in an.groups if g.prunable and not ignored(g)]


def _allowed(grp: Group, max_ratio: float, round_to: int) -> np.ndarray:
    """Removal counts a group may take: kept stays >= 1 (and a multiple of round_to)."""
    cap = min(int(grp.removable.sum()), int(np.floor(max_ratio * grp.size)), grp.size - 1)
    counts = np.arange(0, max(cap, 0) + 1)
    kept = grp.size - counts
    ok = (kept % round_to == 0) & (kept >= round_to) if round_to > 1 else np.ones_like(counts, bool)
    ok[0] = True
    return counts[ok]


def select(an: Analysis, scores: dict[int, np.ndarray], kind: str, value: float, scope: str = "global",
           max_group_ratio: float = 0.9, round_to: int = 1, ignore: list[str] | None = None) -> np.ndarray:
    """Boolean ``removed[cid]`` meeting the target (a fraction to remove)."""
    groups = [g for g in candidates(an, ignore or []) if g.id in scores]
    orders: dict[int, np.ndarray] = {}
    allowed: dict[int, np.ndarray] = {}
    for g in groups:
        s = np.asarray(scores[g.id], dtype=np.float64)
        idx = np.nonzero(g.removable)[0]
        orders[g.id] = idx[np.argsort(s[idx], kind="stable")]
        allowed[g.id] = _allowed(g, max_group_ratio, round_to)

    def build(counts: dict[int, int]) -> np.ndarray:
        removed = np.zeros(an.n_channels, dtype=bool)
        for g in groups:
            c = counts.get(g.id, 0)
            if c:
                removed[g.channels[orders[g.id][:c]]] = True
        return removed

    def snap(g: Group, want: int) -> int:
        a = allowed[g.id]
        return int(a[np.searchsorted(a, want, side="right") - 1])

    if scope == "local":
        def at(t: float) -> np.ndarray:
            return build({g.id: snap(g, int(np.floor(t * g.size + 1e-9))) for g in groups})
        steps = sorted({0.0, 1.0} | {c / g.size for g in groups for c in allowed[g.id]})
    else:
        ranking = sorted(((float(scores[g.id][ch]), g.id, pos) for g in groups
                          for pos, ch in enumerate(orders[g.id])), key=lambda r: r[0])
        gid_seq = np.array([r[1] for r in ranking], dtype=np.int64)
        by_id = {g.id: g for g in groups}

        def at(t: float) -> np.ndarray:
            k = int(round(t))
            counts = dict(zip(*np.unique(gid_seq[:k], return_counts=True), strict=True)) if k else {}
            return build({int(gid): snap(by_id[int(gid)], int(c)) for gid, c in counts.items()})
        steps = list(range(len(ranking) + 1))

    measure = _measure(an, kind, groups)
    removed = _bisect(at, steps, measure, value, kind)
    if abs(measure(removed) - value) > 0.01 * value:
        removed = _fill(removed, groups, orders, allowed, measure, value)
    return removed


def _fill(removed: np.ndarray, groups: list[Group], orders: dict[int, np.ndarray],
          allowed: dict[int, np.ndarray], measure: Callable[[np.ndarray], float], value: float,
          budget: int = 400) -> np.ndarray:
    """Coarse steps (a whole head) can overshoot: starting below the target, add the next
    channel(s) of other groups, cheapest first, while the target is not passed by more than 1 %."""
    best = removed.copy()
    cur = measure(best)
    if cur > value:  # step back to below the target along the same order
        for g in sorted(groups, key=lambda g: -g.size):
            c = int(best[g.channels].sum())
            smaller = allowed[g.id][allowed[g.id] < c]
            if smaller.size:
                trial = best.copy()
                trial[g.channels[orders[g.id][smaller[-1]:c]]] = False
                m = measure(trial)
                if m <= value:
                    best, cur = trial, m
                    break
    evals = 0
    improved = True
    while improved and evals < budget and cur < value * 0.99:
        improved = False
        for g in groups:
            c = int(best[g.channels].sum())
            bigger = allowed[g.id][allowed[g.id] > c]
            if not bigger.size:
                continue
            trial = best.copy()
            trial[g.channels[orders[g.id][c:bigger[0]]]] = True
            m = measure(trial)
            evals += 1
            if m <= value * 1.01:
                best, cur, improved = trial, m, True
            if cur >= value * 0.99 or evals >= budget:
                break
    return best


def _measure(an: Analysis, kind: str, groups: list[Group]) -> Callable[[np.ndarray], float]:
    if kind == "channels":
        total = sum(g.size for g in groups) or 1
        return lambda removed: float(removed.sum()) / total
    base = an.macs() if kind == "flops" else an.params()
    fn = an.macs if kind == "flops" else an.params
    return lambda removed: 1.0 - fn(removed) / base if base else 0.0


def _bisect(at: Callable[[float], np.ndarray], steps: list, measure: Callable[[np.ndarray], float],
            value: float, kind: str) -> np.ndarray:
    best_removed = at(steps[-1])
    best = measure(best_removed)
    if best + 1e-12 < value * 0.98:
        raise UnreachableTargetError(
            f"cannot remove {value:.1%} of {kind}: at most {best:.1%} is reachable with this model and spec "
            f"(max_group_ratio, ignore, unprunable groups)", best=best)
    lo, hi = 0, len(steps) - 1  # invariant: measure(at(steps[hi])) >= value (or hi is the end)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measure(at(steps[mid])) >= value:
            hi = mid
        else:
            lo = mid
    r_hi = at(steps[hi])
    r_lo = at(steps[lo])
    # the closer of the two neighbours (both measured exactly)
    return r_lo if abs(measure(r_lo) - value) < abs(measure(r_hi) - value) else r_hi
