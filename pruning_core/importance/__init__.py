"""Criteria registry: each criterion scores every channel place; lifting to groups (reduction,
normalization) is the same for all criteria (``pruning_core.importance.lift``)."""

from pruning_core.importance.registry import CRITERIA, Criterion, ScoreContext, register, score

# Registration side effects: one module per criterion family.
from pruning_core.importance import magnitude  # noqa: F401  isort: skip
from pruning_core.importance import datafree  # noqa: F401  isort: skip
from pruning_core.importance import obspa  # noqa: F401  isort: skip
# torch-backed families register when one of their names is first looked up
CRITERIA.defer("pruning_core.importance.gradient", ["taylor", "snip", "grasp", "crop", "synflow"])
CRITERIA.defer("pruning_core.importance.autobot", ["autobot"])

__all__ = ["CRITERIA", "Criterion", "ScoreContext", "register", "score"]
