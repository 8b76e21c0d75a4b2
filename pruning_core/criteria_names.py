"""The criteria: name -> (needs data?, what it is), importable without torch or onnx: the API
process validates specs with it. It lives outside ``pruning_core.importance``, whose package import
loads the registry (onnx, numpy, the analysis).

This is the one description of each criterion: ``importance.register`` takes ``needs_data`` and
``doc`` from here, and refuses a name that is not listed; a test checks that the registry holds
exactly these names.
"""

from __future__ import annotations

from typing import NamedTuple


class CriterionInfo(NamedTuple):
    # "needs data" means the criterion cannot run without a calibration .npz; the gradient
    # criteria and obspa use data when given and data-free generated inputs otherwise, so none of
    # them requires it.
    needs_data: bool
    doc: str


CRITERION_INFO: dict[str, CriterionInfo] = {
    "l1": CriterionInfo(False, "L1 norm of the group's weights (data-free)"),
    "l2": CriterionInfo(False, "L2 norm of the group's weights (data-free)"),
    "bn_scale": CriterionInfo(False, "|gamma| of the group's BatchNorm / LayerNorm / GroupNorm scales (network "
                                     "slimming); groups without a norm fall back to l2 (data-free)"),
    "random": CriterionInfo(False, "uniform random scores seeded by spec.seed (a baseline; data-free)"),
    "fpgm": CriterionInfo(False, "FPGM: summed distance of each channel's filter to the other filters; channels "
                                 "near the geometric median are redundant (data-free)"),
    "lamp": CriterionInfo(False, "LAMP: channel energy over the energy of all channels at least as large, per "
                                 "producing layer (layer-adaptive magnitude; data-free)"),
    "synflow": CriterionInfo(False, "SynFlow: |theta * dR/dtheta| with R the summed output of the network with "
                                    "|weights| on an all-ones input (pruning at initialization, data-free, one "
                                    "pass)"),
    "taylor": CriterionInfo(False, "first-order Taylor: |sum over the channel's weights of w*g| per batch, summed "
                                   "over batches (labels -> cross-entropy; no labels -> distillation to the "
                                   "original outputs; no data -> data-free inputs)"),
    "snip": CriterionInfo(False, "SNIP connection sensitivity: sum over the channel's weights of |w * mean "
                                 "gradient| (pruning at initialization; data or data-free)"),
    "grasp": CriterionInfo(False, "GraSP: S = -w*Hg (Hessian-gradient product); channels with the largest summed "
                                  "S are removed, i.e. importance sum(w*Hg), shifted to be >= 0 per place (keeps "
                                  "gradient flow; pruning at initialization)"),
    "crop": CriterionInfo(False, "CroP: sum over the channel's weights of |w*Hg|, keeps the channels that carry "
                                 "gradient flow (pruning at initialization)"),
    "obspa": CriterionInfo(False, "OBSPA: Optimal Brain Surgeon error of removing each channel's input columns "
                                  "from every consumer (H = X^T X from the original model on calibration or "
                                  "data-free inputs), then closed-form least-squares refit of the kept weights "
                                  "(no fine-tuning; data optional)"),
    "autobot": CriterionInfo(False, "AutoBot: trainable per-group channel gates trained with a FLOPs-target loss; "
                                    "the scores are the gate values (distillation without labels, data-free "
                                    "inputs without data)"),
}
