"""The zoo's acceptance check of a pruned export (issue 3), shared by the test and the table writer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tests.zoo.check import ort_session, run_ort
from tests.zoo.export import example_data

# The zoo checks analysis and surgery on every architecture, so no timing (measure: false): its nets
# run in 0.05 ms, where a 30 % channel cut at odd widths can measure slower and would be refused
# (runtime speed: tests/core/runtime/test_latency.py and bench/runtime_speed.py).
SPEC: dict[str, Any] = {"target": {"channels": 0.3}, "criterion": "l1", "scope": "global", "measure": False}
# Global l1 rarely picks whole attention heads; half of every group, locally, reaches head and GQA surgery
# (single-channel steps, so that every group, however narrow, can lose half).
LOCAL_SPEC: dict[str, Any] = {"target": {"channels": 0.5}, "criterion": "l1", "scope": "local", "round_to": 1,
                              "measure": False}
VERIFY_RTOL = 1e-4


@dataclass
class Outcome:
    groups_total: int
    groups_prunable: int
    groups_pruned: int
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    verify_max_error: float
    output_scale: float
    seconds: float


class ZooFailure(AssertionError):
    pass


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ZooFailure(msg)


def prune_and_check(path: Path, out_dir: Path, spec: dict[str, Any] | None = None) -> Outcome:
    """Prune an export with pruning_core.api.prune and check it; raises ZooFailure (or the library's error)."""
    from pruning_core.api import prune

    t0 = time.perf_counter()
    result = prune(path, spec or SPEC, out_dir)
    seconds = time.perf_counter() - t0

    pruned_path = Path(result.artifacts["pruned.onnx"])
    onnx.checker.check_model(onnx.load(str(pruned_path)), full_check=True)

    inputs, expected = example_data(path)
    got = run_ort(pruned_path, inputs)
    _require(list(got) == list(expected), f"output names changed: {list(got)} != {list(expected)}")
    declared = {o.name: [d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim]
                for o in onnx.load(str(path), load_external_data=False).graph.output}
    for name, want in expected.items():
        # a dim the original declares symbolic may depend on the data (a decoded sequence's length)
        fixed = [a for a, d in enumerate(declared.get(name, [])) if d is not None] if name in declared else None
        same = got[name].shape == want.shape if fixed is None else \
            got[name].ndim == want.ndim and all(got[name].shape[a] == want.shape[a] for a in fixed)
        _require(same, f"output {name!r}: shape {got[name].shape} != {want.shape}")
    ins_before = [i.name for i in ort_session(path).get_inputs()]
    ins_after = [i.name for i in ort_session(pruned_path).get_inputs()]
    _require(ins_after == ins_before, f"input names changed: {ins_after} != {ins_before}")

    report = result.report
    verify = report["verify"]
    _require(not verify.get("skipped"), "verify was skipped")
    scale = max(1.0, max(float(np.abs(v).max()) for v in expected.values()))
    err = float(verify["max_error"])
    _require(err <= VERIFY_RTOL * scale, f"verify max error {err:.3g} > {VERIFY_RTOL:g} * {scale:.3g}")

    macs = report["macs"]
    _require(macs["after"] < macs["before"], f"MACs did not drop: {macs['before']} -> {macs['after']}")
    groups = report["groups_summary"]
    return Outcome(
        groups_total=int(groups["total"]),
        groups_prunable=int(groups["prunable"]),
        groups_pruned=int(groups["pruned"]),
        macs_before=int(macs["before"]),
        macs_after=int(macs["after"]),
        params_before=int(report["params"]["before"]),
        params_after=int(report["params"]["after"]),
        verify_max_error=err,
        output_scale=scale,
        seconds=seconds,
    )
