"""Per-op channel rules, one module per op family, all registered in ``registry.RULES``."""

from pruning_core.analysis.rules import conv, elementwise, linear, norm, quantize, recurrent, reduce, shape  # noqa: F401  (registration)
from pruning_core.analysis.rules.registry import RULES, OpRule, rule

__all__ = ["RULES", "OpRule", "rule"]
