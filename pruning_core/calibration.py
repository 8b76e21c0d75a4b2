"""Calibration: batches of model inputs and activation capture with onnxruntime.

Batches are cut at the model's own batch size (the normalized graph has concrete input shapes and
its shape constants are folded for that size; ``input_shapes`` in the spec sets it for models with
a dynamic batch axis). Without data, every batch is generated from the graph itself
(``data.synthetic_inputs``) with its own seed, so more samples mean new samples.

Capture adds the wanted intermediate tensors as graph outputs of a copy of the model and runs it
in onnxruntime: the original model, exactly as deployed, is what criteria such as OBSPA measure.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, TensorProto, helper

from pruning_core import data as data_mod
from pruning_core.errors import DataError
from pruning_core.graph import Graph


@dataclass
class Batch:
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None


def batch_size(b: Batch) -> int:
    return len(next(iter(b.feeds.values()))) if b.feeds else 0


def model_batch(g: Graph) -> int:
    """The batch size the normalized graph runs at (leading dim of its first input)."""
    for name in g.inputs:
        shape = g.shape(name)
        if shape:
            return int(shape[0])
    return 1


def batches(g: Graph, data: dict[str, np.ndarray] | None = None, labels: np.ndarray | None = None,
            samples: int = 128, seed: int = 0) -> Iterator[Batch]:
    """Up to ``samples`` samples in batches of the model's batch size.

    With data, the last batch is filled up by wrapping around (the model's batch size is fixed);
    without data, ``ceil(samples / batch)`` data-free batches, each with its own seed."""
    bsz = model_batch(g)
    if data is None:
        for i in range(max(1, -(-samples // bsz))):
            yield Batch(data_mod.synthetic_inputs(g, batch=bsz, seed=seed + 7919 * (i + 1)))
        return
    missing = [n for n in g.inputs if n not in data]
    if missing:
        raise DataError(f"calibration data lacks input(s) {missing}; the model's inputs are {g.inputs}")
    n = min(len(next(iter(data.values()))), samples)
    if n == 0:
        raise DataError("calibration data holds no samples")
    for start in range(0, n, bsz):
        idx = np.arange(start, start + bsz) % n
        yield Batch({k: np.ascontiguousarray(data[k][idx]) for k in g.inputs},
                    None if labels is None else labels[idx])


def with_outputs(g: Graph, tensors: Iterable[str]) -> ModelProto:
    """A copy of the model that also outputs ``tensors`` (intermediate activations)."""
    m = ModelProto()
    m.CopyFrom(g.model)
    have = {o.name for o in m.graph.output}
    for t in tensors:
        if t in have:
            continue
        if t in g.inits:
            raise ValueError(f"{t!r} is an initializer, not an activation")
        m.graph.output.append(helper.make_tensor_value_info(t, g.dtypes.get(t, TensorProto.FLOAT), None))
        have.add(t)
    return m


def session(model: ModelProto):
    """An onnxruntime session on every core whose threads do not spin between runs: the caller
    does heavy numpy / torch work between runs, and spinning threads would starve it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def capture(g: Graph, tensors: list[str],
            source: Iterable[Batch]) -> Iterator[tuple[Batch, dict[str, np.ndarray]]]:
    """Run the original model on every batch; yield (batch, {tensor: value}) for ``tensors``."""
    sess = session(with_outputs(g, tensors))
    names = [o.name for o in sess.get_outputs()]
    want = set(tensors)
    for b in source:
        outs = sess.run(None, b.feeds)
        yield b, {n: v for n, v in zip(names, outs, strict=True) if n in want}


def outputs(g: Graph, source: Iterable[Batch]) -> Iterator[tuple[Batch, list[np.ndarray]]]:
    """The model's own outputs per batch (teacher outputs for distillation)."""
    sess = session(g.model)
    for b in source:
        yield b, sess.run(None, b.feeds)
