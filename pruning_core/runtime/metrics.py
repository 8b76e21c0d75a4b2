"""Model figures: parameters, MACs (multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul,
the thop/fvcore convention), onnxruntime latency (fidelity: ``runtime.fidelity``).

``node_macs`` takes a shape function so the same MAC model serves a concrete model (shapes from
shape inference) and selection (shapes after a candidate set of channels is removed)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
from onnx import ModelProto, NodeProto

from pruning_core.ir.graph import RECURRENT, Graph, attr
from pruning_core.ir.weights import LightModel, as_inputs

ShapeFn = Callable[[str], tuple[int, ...]]


def node_macs(node: NodeProto, shape: ShapeFn) -> int:
    op = node.op_type
    try:
        if op == "Conv":
            return int(np.prod(shape(node.output[0]))) * int(np.prod(shape(node.input[1])[1:]))
        if op == "ConvTranspose":
            return int(np.prod(shape(node.input[0]))) * int(np.prod(shape(node.input[1])[1:]))
        if op == "Gemm":
            a = shape(node.input[0])
            k = a[0] if attr(node, "transA", 0) else a[1]
            return int(np.prod(shape(node.output[0]))) * int(k)
        if op == "MatMul":
            a = shape(node.input[0])
            return int(np.prod(shape(node.output[0]))) * int(a[-1])
        if op in RECURRENT:  # every step and sample: X @ W^T and h @ R^T, all gates and directions
            steps = int(np.prod(shape(node.input[0])[:2]))
            return steps * (int(np.prod(shape(node.input[1]))) + int(np.prod(shape(node.input[2]))))
    except KeyError:
        return 0
    return 0


def is_weight(g: Graph, name: str, arr: np.ndarray) -> bool:
    """Parameters are the model's own float initializers (not folded shape constants), and the
    integer weights of a QDQ graph (what its DequantizeLinear nodes read)."""
    if name not in g.original_inits:
        return False
    if arr.dtype.kind == "f":
        return True
    from pruning_core.ir.quant import weight_qparams

    return arr.dtype.kind in "iu" and name in weight_qparams(g)


def count_params(g: Graph) -> int:
    return int(sum(a.size for n, a in g.inits.items() if is_weight(g, n, a)))


def count_macs(g: Graph) -> int:
    return int(sum(node_macs(n, g.shape) for n in g.nodes))


def session(model: ModelProto | LightModel | str, threads: int = 1, spin: bool = True):
    """An onnxruntime session on a path, a ModelProto or a light model (:class:`FedSession`).
    ``threads=0``: every core; ``spin=False``: idle threads sleep between runs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if isinstance(model, LightModel):
        sk = as_inputs(model.proto)
        return FedSession(ort.InferenceSession(sk.SerializeToString(), opts, providers=["CPUExecutionProvider"]),
                          model.feeds())
    src = model.SerializeToString() if isinstance(model, ModelProto) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


class FedSession:
    """A session whose weights are graph inputs, fed from the light model's arrays on every run:
    onnxruntime reads numpy memory in place, so no copy of the weights is ever made. For
    checks, not for latency (constant weights enable optimizations inputs do not)."""

    def __init__(self, sess, weights: dict[str, np.ndarray]) -> None:
        self.sess, self.weights = sess, weights

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sess.run(output_names, {**feeds, **self.weights})

    def get_inputs(self):
        return [i for i in self.sess.get_inputs() if i.name not in self.weights]

    def get_outputs(self):
        return self.sess.get_outputs()


def run(model, inputs: dict[str, np.ndarray], threads: int = 0) -> list[np.ndarray]:
    """Outputs of a path / ModelProto / LightModel / session on ``inputs``."""
    sess = model if hasattr(model, "run") else session(model, threads)
    return sess.run(None, inputs)


def latency_ms(model, inputs: dict[str, np.ndarray], runs: int = 20, warmup: int = 2,
               threads: int = 1, budget_s: float = 3.0) -> dict[str, float]:
    """Median wall time of onnxruntime runs at a fixed thread count. ``model`` is a path, a
    ModelProto or an InferenceSession; big models get fewer runs (at least 3) within ``budget_s``."""
    sess = model if hasattr(model, "run") else session(model, threads)
    t0 = time.perf_counter()
    for _ in range(warmup):
        sess.run(None, inputs)
    per_run = (time.perf_counter() - t0) / max(1, warmup)
    n = max(3, min(runs, int(budget_s / max(per_run, 1e-6))))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        sess.run(None, inputs)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": float(statistics.median(times)), "runs": n, "threads": threads}
