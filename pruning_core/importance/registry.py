"""The one registry of criteria. A criterion returns, per group, per place, one score per channel
(``[n_places, n_channels]``); ``lift`` reduces places and normalizes within the group, so selection
never knows which criterion ran."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pruning_core.analysis.groups import Analysis, Group
from pruning_core.errors import SpecError

PlaceScores = Callable[["ScoreContext", Group], np.ndarray]
# (ctx, removed[cid], pruned model) -> compensated model: closed-form refit of consumer weights
Compensate = Callable[["ScoreContext", np.ndarray, Any], Any]


@dataclass
class ScoreContext:
    analysis: Analysis
    spec: Any  # PruneSpec
    data: dict[str, np.ndarray] | None = None
    labels: np.ndarray | None = None
    progress: Callable[[float, str | None], None] | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    def weight(self, place) -> np.ndarray:
        return self.analysis.graph.inits[place.tensor]

    def report(self, fraction: float, message: str | None = None) -> None:
        """Progress of the current step. Long loops call it at least every few seconds: it is
        also where a cancel request (a callback raising ``Cancelled``) stops an in-process run."""
        if self.progress is not None:
            self.progress(fraction, message)


@dataclass(frozen=True)
class Criterion:
    name: str
    fn: PlaceScores
    needs_data: bool = False
    doc: str = ""
    # whole-model criteria (one pass for all groups) set prepare: called once before fn
    prepare: Callable[[ScoreContext], None] | None = None
    # runs after surgery and verification (verification checks the uncompensated surgery)
    compensate: Compensate | None = None
    # a criterion whose scores are comparable across groups as they are (AutoBot's gates, one
    # global threshold) forces its normalizer; None = the spec's
    normalizer: str | None = None


class Registry(dict[str, Criterion]):
    """name -> Criterion. Modules that need torch register on the first lookup of one of their
    names: importing torch costs about a second, which plain magnitude pruning never pays."""

    def __init__(self) -> None:
        super().__init__()
        self._deferred: dict[str, str] = {}

    def defer(self, module: str, names: list[str]) -> None:
        self._deferred.update(dict.fromkeys(names, module))

    def _load(self, module: str) -> None:
        self._deferred = {n: m for n, m in self._deferred.items() if m != module}
        importlib.import_module(module)

    def load_all(self) -> None:
        for module in set(self._deferred.values()):
            self._load(module)

    def __missing__(self, name: str) -> Criterion:
        if name in self._deferred:
            self._load(self._deferred[name])
            return dict.__getitem__(self, name)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in self._deferred

    def get(self, name: str, default=None):  # type: ignore[override]
        return self[name] if name in self else default

    def __iter__(self) -> Iterator[str]:
        self.load_all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self.load_all()
        return dict.__len__(self)

    def keys(self):  # type: ignore[override]
        self.load_all()
        return dict.keys(self)

    def values(self):  # type: ignore[override]
        self.load_all()
        return dict.values(self)

    def items(self):  # type: ignore[override]
        self.load_all()
        return dict.items(self)


CRITERIA = Registry()


def register(name: str, *, needs_data: bool = False, doc: str = "",
             prepare: Callable[[ScoreContext], None] | None = None,
             compensate: Compensate | None = None,
             normalizer: str | None = None) -> Callable[[PlaceScores], PlaceScores]:
    def deco(fn: PlaceScores) -> PlaceScores:
        if dict.__contains__(CRITERIA, name):
            raise ValueError(f"criterion {name} registered twice")
        CRITERIA[name] = Criterion(name, fn, needs_data, doc, prepare, compensate, normalizer)
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
