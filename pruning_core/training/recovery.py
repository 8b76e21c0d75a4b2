"""Recovery: fine-tune the pruned model by distillation from the original, on the torch twin.

``recover(original, pruned, spec, data, class_labels, progress, trainable)`` trains every weight
of the pruned model (``OnnxTwin`` parameters; BatchNorm running statistics stay as they are, the
twin always computes inference semantics) that is one of the model's own parameters
(``trainable``): constants normalization folded at the analysis shapes (an embedding row expanded
to [batch, seq, hidden], a mask) stay as they are -- trained, they would differ at every position
and the saved model could no longer be given back its dynamic dims (``ir.signature``) to reproduce the original model's outputs
(``losses.distill_loss``: KL divergence on logits, MSE normalized by the teacher's variance on any
other float output), plus ``losses.supervised_loss`` on the first output when class labels exist.
Adam, ``spec.recover`` steps / lr / batch size on ``spec.device``, progress per step; batches come
from a ``batches.BatchSource`` (data-free inputs without data). The trained weights are written
back into the pruned ONNX model, which keeps its graph unchanged (only initializer values change),
so it still passes the checker and runs in onnxruntime.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

import numpy as np
import torch
from onnx import ModelProto

from pruning_core.errors import DataError
from pruning_core.spec import PruneSpec, Recover
from pruning_core.training.batches import BatchSource, Pass, device_for
from pruning_core.training.losses import distill_loss, supervised_loss
from pruning_core.training.passes import backward_mean, twin_of

Tensor = torch.Tensor
ProgressFn = Callable[[float, str | None], None]


def recover(original_model: ModelProto, pruned_model: ModelProto, spec: PruneSpec,
            data: dict[str, np.ndarray] | None, class_labels: np.ndarray | None,
            progress: ProgressFn | None = None, trainable: Collection[str] | None = None) -> ModelProto:
    """The pruned model with its weights fine-tuned to match the original (see module doc);
    ``spec.recover`` holds the options (their defaults when the spec has none). ``trainable``:
    the original's own initializer names (None: every float initializer)."""
    from pruning_core.ir import graph as graph_mod

    opts = spec.recover or Recover()
    device = device_for(spec.device)
    torch.manual_seed(int(spec.seed))
    g = graph_mod.load(original_model)
    source = BatchSource(g, data, class_labels, int(spec.seed), spec.calibration.samples)

    teacher = twin_of(original_model, device, frozen=True)
    student = twin_of(pruned_model, device)
    params = [p for name, p in student.named_onnx_parameters() if trainable is None or graph_mod.origin(name, trainable)]
    if not params:
        return pruned_model

    def run_teacher(f: dict[str, Tensor]) -> tuple[Tensor, ...]:
        return teacher(**f)

    def run_student(f: dict[str, Tensor]) -> tuple[Tensor, ...]:
        return student(**f)

    source.probe([run_teacher, run_student], device)

    def loss_of(p: Pass) -> Tensor:
        with torch.no_grad():
            t_out = source.call(run_teacher, p)
        s_out = source.call(run_student, p)
        loss = distill_loss(s_out, t_out)
        if p.class_labels is not None:
            loss = loss + supervised_loss(s_out[0], p.class_labels)
        return loss

    opt = torch.optim.Adam(params, lr=opts.lr)
    rng = np.random.default_rng(int(spec.seed))
    start = [p.detach().clone() for p in params]
    skipped = 0
    for step in range(opts.steps):
        passes = source.next_passes(opts.batch_size, rng, device)
        opt.zero_grad(set_to_none=True)
        on_pass = None if progress is None else (lambda frac, s=step: progress((s + frac) / opts.steps, None))
        total = backward_mean(passes, loss_of, on_pass=on_pass)
        if math.isfinite(total):
            opt.step()
        else:  # one bad batch must not poison the weights
            skipped += 1
        if progress is not None:
            progress((step + 1) / opts.steps, f"step {step + 1}/{opts.steps} loss {total:.4g}")
    if skipped == opts.steps:
        raise DataError("recovery diverged: every step gave a non-finite loss")
    with torch.no_grad():  # a run of non-finite steps must not ship NaN weights either
        for p, p0 in zip(params, start, strict=True):
            if not torch.isfinite(p).all():
                p.copy_(p0)
    return student.to("cpu").export_initializers(pruned_model)

