from __future__ import annotations

from pruning_core.criteria_names import CRITERIA as NAMES
from pruning_core.importance import CRITERIA
from pruning_core.ops import RULES


def test_criteria_names_match_registry() -> None:
    # the API validates specs with names.CRITERIA (no torch there); the registry must agree
    assert set(NAMES) == set(CRITERIA)
    for name, crit in CRITERIA.items():
        assert crit.needs_data == NAMES[name][0]


def test_rule_table_covers_the_issue_ops() -> None:
    need = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization",
            "GroupNormalization", "LayerNormalization", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid",
            "HardSwish", "Gelu", "Erf", "Tanh", "Clip", "Softplus", "Add", "Sub", "Mul", "Div", "Where", "Pow",
            "MaxPool", "AveragePool", "GlobalAveragePool", "Resize", "Pad", "Concat", "Split", "Slice",
            "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast",
            "Softmax", "Gather", "DepthToSpace"}
    assert need <= set(RULES)
