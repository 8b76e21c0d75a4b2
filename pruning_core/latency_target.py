"""A latency target met on the measured model, not on a prediction.

The latency table's linear model ranks removals; it cannot know how onnxruntime fuses and
schedules the whole pruned graph. So the selection for ``target: {"latency": R}`` is built,
saved and timed against the original (in turn, on the job's runtime), and the aim is corrected
by what was measured (a secant step on the predicted fraction) until the measured latency is
within ``TOLERANCE`` of the target ``(1 - R) x before``. A target beyond what the model can
reach is refused with the largest fraction measured.

The loop aims tighter than it promises (``AIM``, half the tolerance) and times a try that lands
there a second time, for longer, before accepting it: a timing is a sample, and the user's own
measurement of the result is another one. A try the second timing moves outside the aim counts
with the longer timing and the search goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pruning_core.errors import UnreachableTargetError
from pruning_core.selection import SelectOptions, select

TOLERANCE = 0.05   # of the target latency: promised
AIM = 0.025        # of the target latency: aimed at, so that a re-timing stays within TOLERANCE
MAX_TRIES = 10


@dataclass
class Trial:
    aim: float                # the predicted fraction selection was asked for
    removed: np.ndarray
    before_ms: float
    after_ms: float
    confirmed: bool = False   # timed a second time, for longer

    @property
    def fraction(self) -> float:
        return 1.0 - self.after_ms / self.before_ms if self.before_ms > 0 else 0.0


def meet_latency(an: Any, scores: dict[int, np.ndarray], opts: SelectOptions,
                 time_pair: Callable[[np.ndarray, bool], tuple[float, float]],
                 progress: Callable[[float, str], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """``time_pair(removed, longer)`` builds the pruned model and returns measured (before_ms,
    after_ms), timed for longer when ``longer``. Returns the selection and what was tried (for
    the report)."""
    goal = opts.value
    aim = goal
    trials: list[Trial] = []
    reach: float | None = None   # the largest predicted fraction (selection's own limit)

    def ok(t: Trial, tol: float = TOLERANCE) -> bool:
        want = (1 - goal) * t.before_ms
        return abs(t.after_ms - want) <= tol * want

    accepted: Trial | None = None

    for i in range(MAX_TRIES):
        try:
            removed = select(an, scores, replace(opts, value=aim))
        except UnreachableTargetError as exc:
            if reach is not None and aim >= reach - 1e-9:
                break
            reach = aim = float(exc.best)
            removed = select(an, scores, replace(opts, value=aim))
        before, after = time_pair(removed, False)
        t = Trial(aim, removed, before, after)
        if ok(t, AIM):  # confirmed by a longer timing, which replaces the first
            t = Trial(aim, removed, *time_pair(removed, True), confirmed=True)
        trials.append(t)
        if progress is not None:
            progress((i + 1) / MAX_TRIES, f"latency try {i + 1}: aim {aim:.3f}, measured {t.fraction:.3f} "
                                          f"({t.after_ms:.3g} of {t.before_ms:.3g} ms)")
        if t.confirmed and ok(t, AIM):
            accepted = t
            break
        # Once tries lie on both sides of the goal: regula falsi between the closest two (the
        # bracket only narrows); before that a secant on the last two, the first step assuming
        # measured tracks aim 1:1.
        below = [x for x in trials if x.fraction < goal]
        above = [x for x in trials if x.fraction > goal]
        if below and above:
            lo = max(below, key=lambda x: x.fraction)
            hi = min(above, key=lambda x: x.fraction)
            span = hi.fraction - lo.fraction
            nxt = lo.aim + (goal - lo.fraction) * (hi.aim - lo.aim) / span if span > 1e-6 else (lo.aim + hi.aim) / 2
            if min(abs(nxt - lo.aim), abs(nxt - hi.aim)) < 1e-4:
                nxt = (lo.aim + hi.aim) / 2
        elif len(trials) >= 2 and abs(trials[-1].fraction - trials[-2].fraction) > 1e-3:
            a, b = trials[-2], trials[-1]
            slope = (b.fraction - a.fraction) / (b.aim - a.aim) if abs(b.aim - a.aim) > 1e-9 else 1.0
            slope = slope if slope > 0.2 else 1.0
            nxt = b.aim + (goal - b.fraction) / slope
        else:
            nxt = aim + (goal - t.fraction)
        nxt = float(np.clip(nxt, 0.005, 0.995 if reach is None else reach))
        if abs(nxt - aim) < 1e-4:
            break
        aim = nxt
    # the accepted try; else the closest of those timed twice that meet the tolerance; else the closest
    within = [t for t in trials if t.confirmed and ok(t)]
    best = accepted or min(within or trials, key=lambda t: abs(t.fraction - goal))
    info = {"goal": goal, "tolerance": TOLERANCE, "aim": AIM, "met": ok(best),
            "tries": [{"aim": round(t.aim, 4), "before_ms": round(t.before_ms, 4), "after_ms": round(t.after_ms, 4),
                       "removed_fraction": round(t.fraction, 4), "confirmed": t.confirmed} for t in trials]}
    if not ok(best):
        most = max(t.fraction for t in trials)
        if most < goal:
            raise UnreachableTargetError(
                f"cannot remove {goal:.0%} of the measured latency: the most measured was {most:.1%} "
                f"({best.after_ms:.3g} ms of {best.before_ms:.3g} ms); lower the target, or allow more "
                f"(max_group_ratio, ignore)", best=most)
        raise UnreachableTargetError(
            f"could not meet {goal:.0%} of the measured latency within {TOLERANCE:.0%}: the closest selection "
            f"removed {best.fraction:.1%} ({best.after_ms:.3g} ms of {best.before_ms:.3g} ms); timings on this "
            f"machine may be too noisy, or the model's widths too coarse", best=best.fraction)
    return best.removed, info
