"""Targets -> which channels go.

Every candidate group orders its removable channels by score; ``global`` scope merges all groups
into one ranking (scores are normalized within groups), ``local`` removes the same share of every
group. One monotone knob (prefix length / share) is bisected until the target is met: a fraction
of ``channels`` (of the prunable groups' channels), ``params`` or ``flops`` (MACs) to remove,
measured exactly with the analysis' shape model, or ``latency`` predicted by the latency table
(``pruning_core.runtime.latency``; ``pruning_core.latency_target`` then meets it measured).

With a latency table, the global ranking is importance lost per millisecond saved for a latency
target (HALP). For a FLOPs target it is importance divided by the square root of the group's
*leverage* (its share of the time saved over its share of the MACs saved, when all its removable
channels go): MACs are what the user asked for, but where a MAC costs more time than average
(large activations, memory-bound depthwise layers) the same MACs buy more speed-up; the square
root keeps importance first. Elsewhere equal scores go to the group that saves more time.
``round_to="auto"`` keeps widths (channels x their block, e.g. heads x head size) a multiple of
the kernels' step, narrow groups included: on onnxruntime's CPU kernels a 1x1 convolution with 12
input channels measured slower than with 16 (it leaves the blocked NCHWc path). Only a target
the step cannot meet falls back to finer steps (``select``)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from pruning_core.analysis.groups import Analysis, Group
from pruning_core.errors import UnreachableTargetError
from pruning_core.spec import PruneSpec

# FLOPs targets with a latency table rank by importance / leverage ** LEVERAGE_POWER: below 1 so
# that importance stays first (see the module docstring)
LEVERAGE_POWER = 0.5


@dataclass(frozen=True)
class SelectOptions:
    """What selection reads of the spec: the target (``kind``, ``value``: the fraction to remove)
    and how channels may go."""

    kind: Literal["flops", "params", "channels", "latency"]
    value: float
    scope: Literal["global", "local"] = "global"
    max_group_ratio: float = 0.9
    round_to: int = 1
    ignore: Sequence[str] = ()
    auto: bool = False                     # round_to is the kernels' step, applied to widths
    table: Any = None                      # a LatencyTable: latency targets, tie-breaks

    @classmethod
    def from_spec(cls, spec: PruneSpec, step: int = 8, table: Any = None) -> SelectOptions:
        """``step``: the kernels' width step when ``round_to`` is "auto"."""
        auto = spec.round_to == "auto"
        return cls(spec.target.kind, spec.target.value, spec.scope, spec.max_group_ratio,
                   step if auto else int(spec.round_to), tuple(spec.ignore), auto, table)


def unmatched_ignores(an: Analysis, ignore: Sequence[str]) -> list[str]:
    """The ``ignore`` patterns that match no tensor of any group: a typo pins nothing, and the
    user should hear so rather than find the layer pruned."""
    tensors = {p.tensor for g in an.groups for p in g.places}
    return [pat for pat in ignore if not any(fnmatch.fnmatch(t, pat) for t in tensors)]


def candidates(an: Analysis, ignore: Sequence[str]) -> list[Group]:
    def ignored(grp: Group) -> bool:
        return any(fnmatch.fnmatch(p.tensor, pat) for p in grp.places for pat in ignore)

    return [g for g in an.groups if g.prunable and not ignored(g)]


def block(grp: Group) -> int:
    """Positions one channel owns in its producer (a head's size; 1 for a plain channel)."""
    prod = [p for p in grp.places if p.producer] or grp.places
    return int(prod[0].index.shape[1]) if prod else 1


def _allowed(grp: Group, max_ratio: float, round_to: int, auto: bool = False) -> np.ndarray:
    """Removal counts a group may take: kept stays >= 1 (and a multiple of round_to). With
    ``auto``, the kept *width* (channels x block) is a multiple of the step."""
    cap = min(int(grp.removable.sum()), int(np.floor(max_ratio * grp.size)), grp.size - 1)
    counts = np.arange(0, max(cap, 0) + 1)
    kept = grp.size - counts
    if auto:
        step = round_to
        w = kept * block(grp)
        ok = (w % step == 0) & (w >= step)
    else:
        ok = (kept % round_to == 0) & (kept >= round_to) if round_to > 1 else np.ones_like(counts, bool)
    ok[0] = True
    return counts[ok]


def select(an: Analysis, scores: dict[int, np.ndarray], opts: SelectOptions) -> np.ndarray:
    """Boolean ``removed[cid]`` meeting the target (a fraction to remove). With ``auto``
    widths, a target the kernels' step cannot meet within 1 % (a small model's few wide steps)
    is met with half the step, down to single channels: the target comes first."""
    if not opts.auto or opts.round_to <= 1:
        return _select(an, scores, opts)
    groups = [g for g in candidates(an, opts.ignore) if g.id in scores]
    measure = _measure(an, opts.kind, groups, opts.table)
    step = opts.round_to
    while True:
        try:
            removed = _select(an, scores, replace(opts, round_to=step))
        except UnreachableTargetError:
            if step <= 1:
                raise
            step //= 2
            continue
        if step <= 1 or abs(measure(removed) - opts.value) <= 0.01 * opts.value:
            return removed
        step //= 2


def _select(an: Analysis, scores: dict[int, np.ndarray], opts: SelectOptions) -> np.ndarray:
    kind, value = opts.kind, opts.value
    max_group_ratio, round_to = opts.max_group_ratio, opts.round_to
    groups = [g for g in candidates(an, opts.ignore) if g.id in scores]
    orders: dict[int, np.ndarray] = {}
    allowed: dict[int, np.ndarray] = {}
    for g in groups:
        s = np.asarray(scores[g.id], dtype=np.float64)
        idx = np.nonzero(g.removable)[0]
        orders[g.id] = idx[np.argsort(s[idx], kind="stable")]
        allowed[g.id] = _allowed(g, max_group_ratio, round_to, opts.auto)
    ms = opts.table.ms_per_channel(groups) if opts.table is not None else {}

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

    if opts.scope == "local":
        def at(t: float) -> np.ndarray:
            return build({g.id: snap(g, int(np.floor(t * g.size + 1e-9))) for g in groups})
        steps = sorted({0.0, 1.0} | {c / g.size for g in groups for c in allowed[g.id]})
    else:
        # one ranking of every removable channel by score; ties keep group order, then position.
        # With a latency table: score per millisecond saved for a latency target; otherwise
        # equal scores go first where they save more time.
        sc = np.concatenate([np.asarray(scores[g.id], np.float64)[orders[g.id]] for g in groups] or [np.zeros(0)])
        gids = np.concatenate([np.full(len(orders[g.id]), g.id, np.int64) for g in groups] or [np.zeros(0, np.int64)])
        saved = np.array([ms.get(int(i), 0.0) for i in gids], np.float64)
        if kind == "latency":
            sc = np.divide(sc, saved, out=np.full_like(sc, np.inf), where=saved > 0)
        elif ms and kind == "flops":
            lev = opts.table.leverage(groups)
            lv = np.array([lev.get(int(i), 1.0) for i in gids], np.float64)
            sc = sc / np.maximum(lv, 1e-6) ** LEVERAGE_POWER
        gid_seq = gids[np.lexsort((-saved, sc))] if ms else gids[np.argsort(sc, kind="stable")]
        by_id = {g.id: g for g in groups}

        def at(t: float) -> np.ndarray:
            k = int(round(t))
            counts = dict(zip(*np.unique(gid_seq[:k], return_counts=True), strict=True)) if k else {}
            return build({int(gid): snap(by_id[int(gid)], int(c)) for gid, c in counts.items()})
        steps = list(range(len(gid_seq) + 1))

    measure = _measure(an, kind, groups, opts.table)
    removed = _bisect(at, steps, measure, value, kind)
    if abs(measure(removed) - value) > 0.01 * value:
        removed = _fill(removed, groups, orders, allowed, measure, value)
    return removed


def _fill(removed: np.ndarray, groups: list[Group], orders: dict[int, np.ndarray],
          allowed: dict[int, np.ndarray], measure: Callable[[np.ndarray], float], value: float,
          budget: int = 1500) -> np.ndarray:
    """Coarse steps (a whole head, a layer of 8 channels) can leave the bisection off the target.
    Local search from there: a move takes one group up to ``w`` allowed steps along its own order
    (its next-weakest channels, or gives back its last ones). The best single move is taken; when
    none gets closer, the best pair (one group up, another down); then the same with a wider
    window. Stops within 1 % of the target, when nothing gets closer, or after ``budget``
    evaluations; the result is never farther from the target than the start."""
    def moves(state: np.ndarray, w: int) -> list[tuple[Group, int, int]]:
        out = []
        for g in groups:
            c = int(state[g.channels].sum())
            a = allowed[g.id]
            out += [(g, c, int(n)) for n in a[a > c][:w]] + [(g, c, int(n)) for n in a[a < c][::-1][:w]]
        return out

    def step(state: np.ndarray, g: Group, c: int, new: int) -> np.ndarray:
        t = state.copy()
        lo, hi = min(c, new), max(c, new)
        t[g.channels[orders[g.id][lo:hi]]] = new > c
        return t

    best = removed
    err = abs(measure(best) - value)
    evals = 0

    def closest(trials) -> tuple[float, np.ndarray] | None:
        nonlocal evals
        found = None
        for t in trials:
            if evals >= budget:
                break
            e = abs(measure(t) - value)
            evals += 1
            if e < err - 1e-12 and (found is None or e < found[0]):
                found = (e, t)
        return found

    while err > 0.01 * value and evals < budget:
        found = None
        for w in (1, 3):
            mv = moves(best, w)
            found = closest(step(best, *m) for m in mv)
            if found is None:
                ups = [m for m in mv if m[2] > m[1]]
                downs = [m for m in mv if m[2] < m[1]]
                found = closest(step(step(best, *u), *d) for u in ups for d in downs if d[0].id != u[0].id)
            if found is not None:
                break
        if found is None:
            break
        err, best = found
    return best


def _measure(an: Analysis, kind: str, groups: list[Group], table: Any = None) -> Callable[[np.ndarray], float]:
    if kind == "latency":
        if table is None:
            raise ValueError("a latency target needs a latency table")
        return table.removed_fraction
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
