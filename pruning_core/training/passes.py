"""Forward / backward passes of the torch twin, shared by recovery, AutoBot and the gradient
criteria.

- ``twin_of``: the twin of a model on a device, in inference semantics (frozen or trainable);
- ``backward_mean``: one training step's backward over its passes (recovery, AutoBot);
- ``batch_grads``: the gradient of a loss per calibration batch (the gradient criteria).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from onnx import ModelProto

from pruning_core.runtime.calibration import Batch
from pruning_core.training.batches import Pass, Run, to_torch

if TYPE_CHECKING:  # pragma: no cover
    from pruning_core.twin.executor import OnnxTwin

Tensor = torch.Tensor


def twin_of(model: ModelProto, device: torch.device, *, frozen: bool = False) -> OnnxTwin:
    """The twin of ``model`` on ``device`` in eval mode (the twin always computes inference
    semantics: BatchNorm running statistics stay as they are); ``frozen``: no parameter needs a
    gradient (teachers, AutoBot's gated model)."""
    from pruning_core.twin.executor import OnnxTwin

    twin = OnnxTwin(model).to(device).eval()
    if frozen:
        twin.requires_grad_(False)
    return twin


def backward_mean(passes: Sequence[Pass], loss_of: Callable[[Pass], Tensor], *,
                  on_pass: Callable[[float], None] | None = None, retain_graph: bool = False) -> float:
    """Backward of the mean of ``loss_of`` over one step's passes: each pass's loss, divided by
    the number of passes, is backpropagated on its own (one pass's graph alive at a time), so
    gradients accumulate to those of the mean. ``on_pass(fraction of the step)`` runs before each
    pass (a step of a big model is long: progress and cancel land inside it). Returns the mean loss
    value."""
    total = 0.0
    for k, p in enumerate(passes):
        if on_pass is not None:
            on_pass((k + 0.5) / len(passes))
        loss = loss_of(p) / len(passes)
        loss.backward(retain_graph=retain_graph)
        total += loss.detach().item()
    return total


def batch_grads(run: Run, batches: Sequence[Batch], params: Sequence[Tensor],
                loss_of: Callable[[tuple[Tensor, ...], np.ndarray | None], Tensor], device: torch.device, *,
                create_graph: bool = False,
                on_batch: Callable[[int], None] | None = None) -> Iterator[tuple[Tensor | None, ...]]:
    """Per batch: ``d loss_of(run(feeds), class_labels) / d params`` (``None`` for a parameter the
    loss does not reach); ``create_graph`` keeps the graph for a second derivative.
    ``on_batch(i)`` runs before batch ``i``."""
    for i, batch in enumerate(batches):
        if on_batch is not None:
            on_batch(i)
        loss = loss_of(run(to_torch(batch.feeds, device)), batch.class_labels)
        yield torch.autograd.grad(loss, list(params), create_graph=create_graph, allow_unused=True)
