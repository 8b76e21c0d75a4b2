"""Training on the torch twin: batches, losses and forward / backward passes shared by recovery
(``training.recovery``), AutoBot's gate training (``importance/autobot.py``) and the gradient
criteria (``importance/gradient.py``).

- ``batches``: the device, feeds as tensors, ``BatchSource`` (training batches of any size);
- ``losses``: distillation (KL / normalized MSE), supervised (class labels), pseudo-targets;
- ``passes``: the twin on a device, a training step's backward, per-batch gradients;
- ``recovery``: fine-tuning the pruned model by distillation from the original.

Imports torch: only the criteria and stages that train load it.
"""

from pruning_core.training.batches import BatchSource, Chunk, Pass, device_for, to_torch
from pruning_core.training.losses import distill_loss, pseudo_target_loss, supervised_loss
from pruning_core.training.passes import backward_mean, batch_grads, twin_of

__all__ = ["BatchSource", "Chunk", "Pass", "backward_mean", "batch_grads", "device_for", "distill_loss",
           "pseudo_target_loss", "supervised_loss", "to_torch", "twin_of"]
