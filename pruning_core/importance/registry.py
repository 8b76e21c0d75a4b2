"""The one registry of criteria. A criterion returns, per group, per place, one score per channel
(``[n_places, n_channels]``); ``lift`` reduces places and normalizes within the group, so selection
never knows which criterion ran."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pruning_core.analysis.groups import Analysis, Group
from pruning_core.criteria_names import CRITERION_INFO
from pruning_core.errors import SpecError
from pruning_core.ir.quant import float_value
from pruning_core.registry import Registry
from pruning_core.spec import PruneSpec

if TYPE_CHECKING:  # pragma: no cover
    from pruning_core.runtime.calibration import Batch

PlaceScores = Callable[["ScoreContext", Group], np.ndarray]
# (ctx, removed[cid], pruned model) -> compensated model: closed-form refit of consumer weights
Compensate = Callable[["ScoreContext", np.ndarray, Any], Any]


@dataclass
class ScoreContext:
    analysis: Analysis
    spec: PruneSpec
    data: dict[str, np.ndarray] | None = None       # calibration inputs by model input name
    class_labels: np.ndarray | None = None          # the .npz's optional "labels", one per sample
    progress: Callable[[float, str | None], None] | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    def weight(self, place) -> np.ndarray:
        """The place's values as the model computes with them (a QDQ weight dequantized)."""
        return float_value(self.analysis.graph, place.tensor)

    def batches(self, progress: Callable[[float], None] | None = None) -> list[Batch]:
        """The calibration batches of this scoring run (``calibration.cached``: built once, the
        same samples for every pass; data-free inputs without data), ``spec.calibration.samples``
        of them, seeded by ``spec.seed``. ``progress`` follows data-free synthesis."""
        from pruning_core.runtime import calibration

        return calibration.cached(self.cache, self.analysis.graph, self.data, self.class_labels,
                                  self.spec.calibration.samples, self.spec.seed, progress)

    def report(self, fraction: float, message: str | None = None) -> None:
        """Progress of the current step. Long loops call it at least every few seconds: it is
        also where a cancel request (a callback raising ``Cancelled``) stops an in-process run."""
        if self.progress is not None:
            self.progress(fraction, message)


@dataclass(frozen=True)
class Criterion:
    name: str
    fn: PlaceScores
    needs_data: bool = False  # from criteria_names, like doc
    doc: str = ""
    # whole-model criteria (one pass for all groups) set prepare: called once before fn
    prepare: Callable[[ScoreContext], None] | None = None
    # runs after surgery and verification (verification checks the uncompensated surgery)
    compensate: Compensate | None = None
    # a criterion whose scores are comparable across groups as they are (AutoBot's gates, one
    # global threshold) forces its normalizer; None = the spec's
    normalizer: str | None = None


CRITERIA: Registry[Criterion] = Registry("criterion")


def register(name: str, *, prepare: Callable[[ScoreContext], None] | None = None,
             compensate: Compensate | None = None,
             normalizer: str | None = None) -> Callable[[PlaceScores], PlaceScores]:
    """Decorator registering a place-score function under ``name``, which must be listed in
    ``criteria_names`` (the one place of its description and whether it needs data)."""
    if name not in CRITERION_INFO:
        raise ValueError(f"criterion {name!r} is not listed in pruning_core.criteria_names")
    info = CRITERION_INFO[name]

    def deco(fn: PlaceScores) -> PlaceScores:
        CRITERIA[name] = Criterion(name, fn, info.needs_data, info.doc, prepare, compensate, normalizer)
        return fn

    return deco


def lift(place_scores: np.ndarray, reduction: str, normalizer: str) -> np.ndarray:
    """[n_places, n_channels] -> [n_channels]: reduce over places, normalize within the group."""
    s = np.asarray(place_scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None]
    red = {"mean": np.mean, "sum": np.sum, "max": np.max}[reduction](s, axis=0)
    if normalizer == "none":
        return red
    denom = {"mean": np.mean, "max": np.max, "sum": np.sum}[normalizer](red)
    return red / denom if denom > 0 else red


def score(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Scores per prunable group id (one value per channel, higher = more important)."""
    name = ctx.spec.criterion
    if name not in CRITERIA:
        raise SpecError(f"unknown criterion {name!r}; known: {', '.join(sorted(CRITERIA))}")
    crit = CRITERIA[name]
    report = ctx.progress
    share = 0.9 if crit.prepare is not None else 0.0  # a whole-model pass dominates the time
    if crit.prepare is not None:
        if report is not None:
            ctx.progress = lambda f, m: report(share * f, m)
        try:
            crit.prepare(ctx)
        finally:
            ctx.progress = report
    out = {}
    prunable = [g for g in ctx.analysis.groups if g.prunable]
    for i, grp in enumerate(prunable):
        ps = crit.fn(ctx, grp)
        out[grp.id] = lift(ps, ctx.spec.group_reduction, crit.normalizer or ctx.spec.normalizer)
        if report is not None:
            report(share + (1 - share) * (i + 1) / max(1, len(prunable)), None)
    return out
