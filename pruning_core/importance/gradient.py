"""Gradient criteria on the torch twin of the ONNX graph: taylor, snip, grasp, crop, synflow.

Objective (``_objective``): with class labels, ``training.losses.supervised_loss`` on the first
output (cross-entropy for integer labels, squared error for float labels). Without labels,
``training.losses.pseudo_target_loss``, distillation to the original model's outputs: at the
original weights the soft-target distillation loss has zero gradient, so the targets are the
original model's hard predictions (argmax) for logits ``[batch, classes]`` and its outputs plus
seeded Gaussian noise of the outputs' own scale for anything else. Without data the inputs are the
data-free generated ones (``ScoreContext.batches``), so every criterion here runs with no data.
The twin and the batches run on ``spec.device`` (``training.batches.device_for``).

taylor accumulates per-place channel scores over batches. snip, grasp, crop and synflow are one
element-wise criterion (``_elementwise``) each: a product ``w * d`` per weight (same shape as the
weight) with ``d`` the mean gradient (snip), the Hessian-gradient product ``Hg`` (grasp, crop) or the
synaptic-flow gradient (synflow); a channel's score is the sum over its weights of ``|w * d|``, or of
the signed ``w * d`` shifted to be >= 0 per place (grasp). Initializers the twin keeps as buffers
(running statistics) have no gradient and are left out of the place rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from pruning_core.analysis.groups import Group
from pruning_core.importance.datafree import channel_rows
from pruning_core.importance.magnitude import _place_norms
from pruning_core.importance.registry import ScoreContext, register
from pruning_core.runtime.data import synthetic_inputs
from pruning_core.training.batches import device_for, to_torch
from pruning_core.training.losses import pseudo_target_loss, supervised_loss
from pruning_core.training.passes import batch_grads, twin_of

Tensor = torch.Tensor
Params = dict[str, torch.nn.Parameter]


class _Twin:
    """The trainable twin of the original model on the spec's device, and the parameters that are
    places of prunable groups (the only gradients we need to read)."""

    def __init__(self, ctx: ScoreContext) -> None:
        self.ctx = ctx
        self.device = device_for(ctx.spec.device)
        self.twin = twin_of(ctx.analysis.graph.full_model(), self.device)
        names = {p.tensor for g in ctx.analysis.groups if g.prunable for p in g.places}
        self.params: Params = {n: p for n, p in self.twin.named_onnx_parameters() if n in names}

    def run(self, feeds: dict[str, Tensor]) -> tuple[Tensor, ...]:
        return self.twin(**feeds)

    def grads(self, start: float = 0.1, end: float = 1.0,
              create_graph: bool = False) -> Iterator[tuple[Tensor | None, ...]]:
        """Per calibration batch, the objective's gradient for ``params`` (in their order). The
        pass spans [start, end] of the step's progress; data-free synthesis, when it runs, is the
        first 10 %. Each pass has its own noise generator seeded by ``spec.seed``."""
        ctx = self.ctx
        gen = torch.Generator().manual_seed(int(ctx.spec.seed))
        batches = ctx.batches(lambda f: ctx.report(0.1 * f))

        def objective(outs: tuple[Tensor, ...], class_labels: np.ndarray | None) -> Tensor:
            if class_labels is not None:
                return supervised_loss(outs[0], class_labels)
            return pseudo_target_loss(outs, gen)

        def tick(i: int) -> None:
            # progress after batch i - 1 (a cancel lands here: one batch is the longest the twin
            # runs without a report)
            ctx.report(start + (end - start) * i / max(1, len(batches)))

        return batch_grads(self.run, batches, list(self.params.values()), objective, self.device,
                           create_graph=create_graph, on_batch=tick)

    def mean_grads(self, end: float = 1.0) -> dict[str, Tensor]:
        total = {n: torch.zeros_like(p) for n, p in self.params.items()}
        n = 0
        for grads in self.grads(end=end):
            for name, gr in zip(self.params, grads, strict=True):
                if gr is not None:
                    total[name] += gr
            n += 1
        return {k: v / max(n, 1) for k, v in total.items()}


def _np(t: Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


# ------------------------------------------------------------------------------ taylor


def _prepare_taylor(ctx: ScoreContext) -> None:
    # First-order change of the loss when a channel goes: sum over its weights of w*g (signed, a
    # channel is removed as a whole), its absolute value summed over batches.
    t = _Twin(ctx)
    params = t.params
    places = [(g.id, k, p) for g in ctx.analysis.groups if g.prunable
              for k, p in enumerate(g.places) if p.tensor in params]
    acc: dict[tuple[int, int], np.ndarray] = {}
    for grads in t.grads():
        wg = {n: _np(p * gr) for (n, p), gr in zip(params.items(), grads, strict=True) if gr is not None}
        for gid, k, place in places:
            if place.tensor in wg:
                s = np.abs(channel_rows(wg[place.tensor], place).sum(axis=1))
                acc[(gid, k)] = acc.get((gid, k), 0.0) + s
    ctx.cache["place_scores"] = acc


@register("taylor", prepare=_prepare_taylor)
def taylor(ctx: ScoreContext, grp: Group) -> np.ndarray:
    acc = ctx.cache["place_scores"]
    rows = [acc[(grp.id, k)] for k in range(len(grp.places)) if (grp.id, k) in acc]
    return np.stack(rows) if rows else _place_norms(ctx, grp, 2)


# ------------------------------------------------------------------------------ w * d per weight


def _mean_gradient(ctx: ScoreContext) -> dict[str, np.ndarray]:
    """SNIP: w * g, g the mean gradient over the calibration batches."""
    t = _Twin(ctx)
    g = t.mean_grads()
    return {n: _np(p * g[n]) for n, p in t.params.items()}


def _hessian_gradient(ctx: ScoreContext) -> dict[str, np.ndarray]:
    """GraSP / CroP: w * Hg per weight, g the mean gradient, Hg by a second backward through
    (g . grad), averaged over the batches."""
    t = _Twin(ctx)
    params = t.params
    ref = t.mean_grads(end=0.4)
    hg = {n: torch.zeros_like(p) for n, p in params.items()}
    n = 0
    plist = list(params.values())
    for grads in t.grads(start=0.4, create_graph=True):
        z = sum(((gr * ref[name]).sum() for name, gr in zip(params, grads, strict=True) if gr is not None),
                start=torch.zeros((), device=t.device))
        if not z.requires_grad:
            continue
        second = torch.autograd.grad(z, plist, allow_unused=True)
        for name, s in zip(params, second, strict=True):
            if s is not None:
                hg[name] += s.detach()
        n += 1
    return {name: _np(p * hg[name] / max(n, 1)) for name, p in params.items()}


def _synaptic_flow(ctx: ScoreContext) -> dict[str, np.ndarray]:
    """SynFlow, pruning at initialization without data: R = sum of the outputs of the network with
    |weights| on an all-ones input; w * dR/dw is each weight's share of the synaptic flow."""
    t = _Twin(ctx)
    twin, params = t.twin, t.params
    with torch.no_grad():
        for p in twin.parameters():
            p.abs_()
    feeds = synthetic_inputs(ctx.analysis.graph, seed=ctx.spec.seed)
    feeds = {k: (np.ones_like(v) if v.dtype.kind == "f" else v) for k, v in feeds.items()}
    plist = list(params.values())
    for attempt in range(3):  # deep nets overflow float32: shrink every weight uniformly, retry
        if attempt:
            with torch.no_grad():
                for p in twin.parameters():
                    p.mul_(1e-2)
        outs = t.run(to_torch(feeds, t.device))
        r = sum((o.sum() for o in outs if o.is_floating_point()), start=torch.zeros((), device=t.device))
        if torch.isfinite(r):
            break
    grads = torch.autograd.grad(r, plist, allow_unused=True)
    return {n: _np(p * g) for (n, p), g in zip(params.items(), grads, strict=True) if g is not None}


def _elem_rows(ctx: ScoreContext, grp: Group) -> np.ndarray:
    elem = ctx.cache["elem"]
    rows = [channel_rows(elem[p.tensor], p).sum(axis=1) for p in grp.places if p.tensor in elem]
    if not rows:  # no trainable place in this group: magnitude keeps the ranking meaningful
        return _place_norms(ctx, grp, 2)
    return np.stack(rows)


def _elementwise(name: str, product: Callable[[ScoreContext], dict[str, np.ndarray]],
                 signed: bool = False) -> None:
    """Register ``name``: per weight ``product(ctx)`` (w * d), |w * d| unless ``signed``; a channel
    scores the sum over its weights. Signed scores (GraSP) are shifted to be >= 0 per place: the
    group normalizer needs non-negative scores, and the shift keeps the order within the place (the
    only order GraSP defines for a channel)."""

    def prepare(ctx: ScoreContext) -> None:
        elem = product(ctx)
        ctx.cache["elem"] = elem if signed else {n: np.abs(v) for n, v in elem.items()}

    def place_scores(ctx: ScoreContext, grp: Group) -> np.ndarray:
        rows = _elem_rows(ctx, grp)
        return rows - rows.min(axis=1, keepdims=True) if signed else rows

    place_scores.__name__ = place_scores.__qualname__ = name
    register(name, prepare=prepare)(place_scores)


_elementwise("snip", _mean_gradient)
_elementwise("grasp", _hessian_gradient, signed=True)
_elementwise("crop", _hessian_gradient)
_elementwise("synflow", _synaptic_flow)
