"""Sanity check of a zoo export itself: valid ONNX, and onnxruntime agrees with torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tests.zoo.export import example_data

RTOL = 1e-4


class ExportMismatch(AssertionError):
    pass


def ort_session(path: Path | str, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_ort(path: Path | str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort_session(path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs), strict=True))


def max_rel_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """max |got - want| / max(1, max |want|), over all outputs."""
    err = 0.0
    for name, w in want.items():
        g = got[name]
        if g.shape != w.shape:
            raise ExportMismatch(f"output {name!r}: shape {g.shape} != torch {w.shape}")
        scale = max(1.0, float(np.abs(w).max()))
        err = max(err, float(np.abs(g.astype(np.float64) - w).max()) / scale)
    return err


def check_model(path: Path | str, rtol: float = RTOL) -> float:
    """Check an export written by tests.zoo.export; returns the max relative error, raises on failure."""
    path = Path(path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inputs, expected = example_data(path)
    graph_inputs = [i.name for i in model.graph.input]
    graph_outputs = [o.name for o in model.graph.output]
    if sorted(graph_inputs) != sorted(inputs):
        raise ExportMismatch(f"graph inputs {graph_inputs} != example inputs {list(inputs)}")
    if graph_outputs != list(expected):
        raise ExportMismatch(f"graph outputs {graph_outputs} != expected {list(expected)}")
    err = max_rel_error(run_ort(path, inputs), expected)
    if not err <= rtol:
        raise ExportMismatch(f"onnxruntime differs from torch: max rel error {err:.3e} > {rtol:.0e}")
    return err
