"""Losses on the twin's outputs, shared by recovery, AutoBot and the gradient criteria.

- ``supervised_loss``: the first output against the user's class labels (cross-entropy for
  integer labels, classes on the last axis; MSE for float labels);
- ``distill_loss``: the student's outputs against a teacher's (KL on logits / probabilities,
  MSE normalized by the teacher's variance on other float outputs): recovery, AutoBot;
- ``pseudo_target_loss``: the model against targets made from its own outputs, for a gradient
  at the original weights without labels (the gradient criteria).

Losses are computed in float32 (``.float()``) whatever the output dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pruning_core.errors import DataError

Tensor = torch.Tensor


def is_logits(t: Tensor) -> bool:
    return t.is_floating_point() and t.ndim == 2 and t.shape[1] >= 2


def _is_probabilities(t: Tensor) -> bool:
    # a softmax head already applied: compare distributions directly, not softmax(softmax)
    return bool((t >= 0).all()) and bool(torch.allclose(t.sum(1), torch.ones_like(t[:, 0]), atol=1e-3))


def supervised_loss(out: Tensor, class_labels: np.ndarray) -> Tensor:
    """Cross-entropy for integer labels (classes on the last axis, -100 ignored), MSE for float
    labels."""
    y = torch.as_tensor(class_labels).to(out.device)
    if y.dtype.is_floating_point:
        return F.mse_loss(out.float(), y.float().reshape(out.shape))
    return F.cross_entropy(out.float().reshape(-1, out.shape[-1]), y.reshape(-1).long(), ignore_index=-100)


def distill_loss(student: Sequence[Tensor], teacher: Sequence[Tensor], temperature: float = 1.0) -> Tensor:
    """KL(teacher || student) on logits / probabilities, normalized MSE on other float outputs;
    averaged over the float outputs."""
    terms = []
    for s, t in zip(student, teacher, strict=True):
        if not s.is_floating_point():
            continue
        s, t = s.float(), t.detach().float()
        if is_logits(t):
            if _is_probabilities(t):
                terms.append(F.kl_div(s.clamp_min(1e-8).log(), t, reduction="batchmean"))
            else:
                tau = temperature
                terms.append(F.kl_div(F.log_softmax(s / tau, 1), F.log_softmax(t / tau, 1),
                                      reduction="batchmean", log_target=True) * tau * tau)
        else:
            var = t.var() if t.numel() > 1 else t.new_ones(())
            terms.append(F.mse_loss(s, t) / var.clamp_min(1e-8))
    if not terms:
        raise DataError("the model has no float output to distill")
    return torch.stack(terms).mean()


def pseudo_target_loss(outs: Sequence[Tensor], gen: torch.Generator) -> Tensor:
    """Distillation to the model's own outputs with a gradient at the current weights (the
    soft-target loss has zero gradient there): cross-entropy to the hard predictions (argmax) when
    the first output is logits ``[batch, classes]``; else squared error, over every float output,
    to the outputs plus seeded Gaussian noise of the outputs' own scale (``gen`` is a CPU generator:
    the same noise on every device)."""
    out = outs[0]
    if is_logits(out):
        return F.cross_entropy(out, out.detach().argmax(1))
    total = out.new_zeros(())
    for o in outs:
        if not o.is_floating_point():
            continue
        t = o.detach()
        sigma = float(t.std()) if t.numel() > 1 else 1.0
        sigma = sigma if sigma > 0 else 1.0
        noise = torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)
        total = total + 0.5 * ((o - (t + sigma * noise)) ** 2).mean() / sigma**2
    return total
