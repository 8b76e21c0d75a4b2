"""Names of the registered criteria, importable without torch or onnx: the API process validates
specs with it. It lives outside ``pruning_core.importance``, whose package import loads the
registry (onnx, numpy, the analysis).

The registry in ``pruning_core.importance`` must register exactly these; a test checks it.
"""

from __future__ import annotations

# name -> (needs data?, one line of what it is). "needs data" means the criterion cannot run
# without a calibration .npz; the gradient criteria and obspa use data when given and data-free
# generated inputs otherwise, so none of them requires it.
CRITERIA: dict[str, tuple[bool, str]] = {
    "l1": (False, "L1 norm of the group's weights"),
    "l2": (False, "L2 norm of the group's weights"),
    "bn_scale": (False, "|gamma| of the group's BatchNorm / LayerNorm / GroupNorm scales; l2 where the "
                        "group has no norm"),
    "random": (False, "uniform random scores seeded by spec.seed (baseline)"),
    "fpgm": (False, "distance of each channel's filter to the others (geometric median: redundant)"),
    "lamp": (False, "LAMP: layer-adaptive magnitude, channel energy over the energy of larger channels"),
    "synflow": (False, "SynFlow at initialization: |theta * dR/dtheta| with |weights| and an all-ones input"),
    "taylor": (False, "first-order Taylor |sum w*g| per channel, summed over batches (data or data-free)"),
    "snip": (False, "SNIP connection sensitivity sum |w*g| of the mean gradient (pruning at init)"),
    "grasp": (False, "GraSP: w * Hg (Hessian-gradient product), keeps the channels that preserve "
                     "gradient flow (pruning at init)"),
    "crop": (False, "CroP: |w * Hg|, gradient-flow preservation (pruning at init)"),
    "obspa": (False, "Optimal Brain Surgeon error of removing the channel from every consumer, with "
                     "least-squares compensation of the kept weights (no fine-tuning, data optional)"),
    "autobot": (False, "AutoBot: trainable per-group channel gates trained with a FLOPs-target loss "
                       "(distillation without labels, data-free inputs without data)"),
}
