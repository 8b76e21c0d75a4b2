from __future__ import annotations

import pytest

from pruning_core.analysis.rules import RULES
from pruning_core.criteria_names import CRITERION_INFO as NAMES
from pruning_core.importance import CRITERIA


def test_criteria_names_match_registry() -> None:
    # the API validates specs with names.CRITERIA (no torch there); the registry must agree
    assert set(NAMES) == set(CRITERIA)
    for name, crit in CRITERIA.items():
        # one description per criterion: the registry takes it from criteria_names
        assert (crit.needs_data, crit.doc) == NAMES[name] and crit.doc


def test_register_refuses_unlisted_names() -> None:
    from pruning_core.importance import register

    with pytest.raises(ValueError, match="not listed in pruning_core.criteria_names"):
        register("not_a_criterion")


def test_rule_table_covers_the_issue_ops() -> None:
    need = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization",
            "GroupNormalization", "LayerNormalization", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid",
            "HardSwish", "Gelu", "Erf", "Tanh", "Clip", "Softplus", "Add", "Sub", "Mul", "Div", "Where", "Pow",
            "MaxPool", "AveragePool", "GlobalAveragePool", "Resize", "Pad", "Concat", "Split", "Slice",
            "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast",
            "Softmax", "Gather", "DepthToSpace"}
    assert need <= set(RULES)


def test_magnitude_pruning_never_imports_torch_and_deferred_names_resolve() -> None:
    # importing torch costs ~1 s per CLI call: only the criteria that need it may pull it in
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import pruning_core.api\n"
        "from pruning_core.importance import CRITERIA\n"
        "assert 'torch' not in sys.modules, 'pruning_core.api imported torch'\n"
        "assert CRITERIA['l1'].name == 'l1' and 'torch' not in sys.modules\n"
        "deferred = dict.fromkeys(CRITERIA.deferred())\n"
        "assert deferred, 'nothing is deferred'\n"
        "for name in deferred:\n"
        "    assert CRITERIA[name].name == name\n"
        "assert 'torch' in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_registries_refuse_duplicates() -> None:
    from pruning_core.registry import Registry

    reg: Registry[int] = Registry("thing")
    reg["a"] = 1
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        reg["a"] = 2
    with pytest.raises(ValueError, match="registered twice"):
        reg.update({"b": 1, "a": 3})
    with pytest.raises(ValueError, match="op rule 'Relu'"):
        RULES["Relu"] = RULES["Relu"]
    with pytest.raises(ValueError, match="criterion 'l1'"):
        CRITERIA["l1"] = CRITERIA["l1"]
