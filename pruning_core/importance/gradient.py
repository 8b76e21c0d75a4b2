"""Gradient criteria on the torch twin of the ONNX graph: taylor, snip, grasp, crop, synflow.

Objective (``_loss``): with labels, cross-entropy (integer labels) or squared error (float labels)
on the first output. Without labels, distillation to the original model's outputs: at the original
weights the soft-target distillation loss has zero gradient, so the targets are the original
model's hard predictions (argmax) for logits ``[batch, classes]`` and its outputs plus seeded
Gaussian noise of the outputs' own scale for anything else. Without data the inputs are the
data-free generated ones (``calibration.batches``), so every criterion here runs with no data.

Each ``prepare`` fills ``ctx.cache["elem"]`` with element-wise scores per initializer (same shape
as the weight) or, for taylor, per-place channel scores; the place function then sums each
channel's block. Initializers the twin keeps as buffers (running statistics) have no gradient and
are left out of the place rows.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pruning_core.analysis.groups import Group
from pruning_core.importance.datafree import channel_rows
from pruning_core.importance.magnitude import _place_norms
from pruning_core.importance.registry import ScoreContext, register
from pruning_core.runtime import calibration
from pruning_core.runtime.data import synthetic_inputs

Tensor = torch.Tensor


def _twin(ctx: ScoreContext):
    from pruning_core.twin.executor import OnnxTwin

    twin = OnnxTwin(ctx.analysis.graph.full_model())
    twin.eval()
    return twin


def _wanted(ctx: ScoreContext, twin) -> dict[str, torch.nn.Parameter]:
    """Parameters that are places of prunable groups: the only gradients we need to read."""
    names = {p.tensor for g in ctx.analysis.groups if g.prunable for p in g.places}
    return {n: p for n, p in twin.named_onnx_parameters() if n in names}


def _batches(ctx: ScoreContext) -> list[calibration.Batch]:
    # data-free synthesis, when it runs, is the first 10 % of the step
    return calibration.cached(ctx.cache, ctx.analysis.graph, ctx.data, ctx.labels,
                              ctx.spec.calibration.samples, ctx.spec.seed, lambda f: ctx.report(0.1 * f))


def _tick(ctx: ScoreContext, i: int, n: int, start: float = 0.1, end: float = 1.0) -> None:
    """Progress after batch ``i`` of ``n`` of a pass spanning [start, end] of the step (a cancel
    lands here: one batch is the longest the twin runs without a report)."""
    ctx.report(start + (end - start) * (i + 1) / max(1, n))


def _loss(outs: tuple[Tensor, ...], labels: np.ndarray | None, gen: torch.Generator) -> Tensor:
    out = outs[0]
    if labels is not None:
        y = torch.as_tensor(labels)
        if y.dtype.is_floating_point:
            return F.mse_loss(out, y.to(out.dtype).reshape(out.shape))
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1).long(), ignore_index=-100)
    if out.is_floating_point() and out.ndim == 2 and out.shape[1] >= 2:
        return F.cross_entropy(out, out.detach().argmax(1))
    total = out.new_zeros(())
    for o in outs:
        if not o.is_floating_point():
            continue
        t = o.detach()
        sigma = float(t.std()) if t.numel() > 1 else 1.0
        sigma = sigma if sigma > 0 else 1.0
        noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
        total = total + 0.5 * ((o - (t + sigma * noise)) ** 2).mean() / sigma**2
    return total


def _forward_loss(twin, batch: calibration.Batch, gen: torch.Generator) -> Tensor:
    outs = twin(**{k: torch.as_tensor(v) for k, v in batch.feeds.items()})
    return _loss(outs, batch.labels, gen)


def _generator(ctx: ScoreContext) -> torch.Generator:
    return torch.Generator().manual_seed(int(ctx.spec.seed))


def _mean_grads(ctx: ScoreContext, twin, params: dict[str, torch.nn.Parameter],
                end: float = 1.0) -> dict[str, Tensor]:
    gen = _generator(ctx)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    n = 0
    batches = _batches(ctx)
    for i, batch in enumerate(batches):
        _tick(ctx, i - 1, len(batches), end=end)
        grads = torch.autograd.grad(_forward_loss(twin, batch, gen), list(params.values()), allow_unused=True)
        for name, gr in zip(params, grads, strict=True):
            if gr is not None:
                total[name] += gr
        n += 1
    return {k: v / max(n, 1) for k, v in total.items()}


def _np(t: Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


# ------------------------------------------------------------------------------ prepares


def _prepare_taylor(ctx: ScoreContext) -> None:
    # First-order change of the loss when a channel goes: sum over its weights of w*g (signed, a
    # channel is removed as a whole), its absolute value summed over batches.
    twin = _twin(ctx)
    params = _wanted(ctx, twin)
    gen = _generator(ctx)
    places = [(g.id, k, p) for g in ctx.analysis.groups if g.prunable
              for k, p in enumerate(g.places) if p.tensor in params]
    acc: dict[tuple[int, int], np.ndarray] = {}
    batches = _batches(ctx)
    for i, batch in enumerate(batches):
        _tick(ctx, i - 1, len(batches))
        grads = torch.autograd.grad(_forward_loss(twin, batch, gen), list(params.values()), allow_unused=True)
        wg = {n: _np(p * gr) for (n, p), gr in zip(params.items(), grads, strict=True) if gr is not None}
        for gid, k, place in places:
            if place.tensor in wg:
                s = np.abs(channel_rows(wg[place.tensor], place).sum(axis=1))
                acc[(gid, k)] = acc.get((gid, k), 0.0) + s
    ctx.cache["place_scores"] = acc


def _prepare_snip(ctx: ScoreContext) -> None:
    twin = _twin(ctx)
    params = _wanted(ctx, twin)
    g = _mean_grads(ctx, twin, params)
    ctx.cache["elem"] = {n: np.abs(_np(p * g[n])) for n, p in params.items()}


def _hessian_grad(ctx: ScoreContext) -> dict[str, np.ndarray]:
    """w * Hg per weight: g the mean gradient, Hg by a second backward through (g . grad)."""
    twin = _twin(ctx)
    params = _wanted(ctx, twin)
    ref = _mean_grads(ctx, twin, params, end=0.4)
    gen = _generator(ctx)
    hg = {n: torch.zeros_like(p) for n, p in params.items()}
    n = 0
    plist = list(params.values())
    batches = _batches(ctx)
    for i, batch in enumerate(batches):
        _tick(ctx, i - 1, len(batches), start=0.4)
        grads = torch.autograd.grad(_forward_loss(twin, batch, gen), plist, create_graph=True, allow_unused=True)
        z = sum(((gr * ref[name]).sum() for name, gr in zip(params, grads, strict=True) if gr is not None),
                start=torch.zeros(()))
        if not z.requires_grad:
            continue
        second = torch.autograd.grad(z, plist, allow_unused=True)
        for name, s in zip(params, second, strict=True):
            if s is not None:
                hg[name] += s.detach()
        n += 1
    return {name: _np(p * hg[name] / max(n, 1)) for name, p in params.items()}


def _prepare_grasp(ctx: ScoreContext) -> None:
    ctx.cache["elem_signed"] = _hessian_grad(ctx)


def _prepare_crop(ctx: ScoreContext) -> None:
    ctx.cache["elem"] = {n: np.abs(v) for n, v in _hessian_grad(ctx).items()}


def _prepare_synflow(ctx: ScoreContext) -> None:
    # Pruning at initialization without data: R = sum of the outputs of the network with |weights|
    # on an all-ones input; |theta * dR/dtheta| measures each weight's share of the synaptic flow.
    twin = _twin(ctx)
    params = _wanted(ctx, twin)
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
        outs = twin(**{k: torch.as_tensor(v) for k, v in feeds.items()})
        r = sum((o.sum() for o in outs if o.is_floating_point()), start=torch.zeros(()))
        if torch.isfinite(r):
            break
    grads = torch.autograd.grad(r, plist, allow_unused=True)
    ctx.cache["elem"] = {n: np.abs(_np(p * g)) for (n, p), g in zip(params.items(), grads, strict=True)
                         if g is not None}


# ------------------------------------------------------------------------------ place scores


def _elem_rows(ctx: ScoreContext, grp: Group, key: str) -> np.ndarray:
    elem = ctx.cache[key]
    rows = [channel_rows(elem[p.tensor], p).sum(axis=1) for p in grp.places if p.tensor in elem]
    if not rows:  # no trainable place in this group: magnitude keeps the ranking meaningful
        return _place_norms(ctx, grp, 2)
    return np.stack(rows)


@register("taylor", prepare=_prepare_taylor,
          doc="first-order Taylor: |sum over the channel's weights of w*g| per batch, summed over batches "
              "(labels -> cross-entropy; no labels -> distillation to the original outputs; no data -> "
              "data-free inputs)")
def taylor(ctx: ScoreContext, grp: Group) -> np.ndarray:
    acc = ctx.cache["place_scores"]
    rows = [acc[(grp.id, k)] for k in range(len(grp.places)) if (grp.id, k) in acc]
    return np.stack(rows) if rows else _place_norms(ctx, grp, 2)


@register("snip", prepare=_prepare_snip,
          doc="SNIP connection sensitivity: sum over the channel's weights of |w * mean gradient| "
              "(pruning at initialization; data or data-free)")
def snip(ctx: ScoreContext, grp: Group) -> np.ndarray:
    return _elem_rows(ctx, grp, "elem")


@register("grasp", prepare=_prepare_grasp,
          doc="GraSP: S = -w*Hg (Hessian-gradient product); channels with the largest summed S are "
              "removed, i.e. importance sum(w*Hg), shifted to be >= 0 per place (pruning at init)")
def grasp(ctx: ScoreContext, grp: Group) -> np.ndarray:
    rows = _elem_rows(ctx, grp, "elem_signed")
    # GraSP scores are signed; the group normalizer needs non-negative scores, and a per-place
    # shift keeps the order within the place (the only order GraSP defines for a channel).
    return rows - rows.min(axis=1, keepdims=True)


@register("crop", prepare=_prepare_crop,
          doc="CroP: sum over the channel's weights of |w*Hg|, keeps the channels that carry gradient "
              "flow (pruning at initialization)")
def crop(ctx: ScoreContext, grp: Group) -> np.ndarray:
    return _elem_rows(ctx, grp, "elem")


@register("synflow", prepare=_prepare_synflow,
          doc="SynFlow: |theta * dR/dtheta| with R the summed output of the network with |weights| on an "
              "all-ones input (pruning at initialization, data-free, one pass)")
def synflow(ctx: ScoreContext, grp: Group) -> np.ndarray:
    return _elem_rows(ctx, grp, "elem")
