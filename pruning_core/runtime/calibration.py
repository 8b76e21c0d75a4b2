"""Calibration: batches of model inputs and activation capture with onnxruntime.

Batches are cut at the model's own batch size (the normalized graph has concrete input shapes and
its shape constants are folded for that size; ``input_shapes`` in the spec sets it for models with
a dynamic batch axis). Without data, inputs are generated from the graph itself:

- models with BatchNorm: ``SYNTH_SAMPLES`` inputs optimized (Adam, ``SYNTH_STEPS`` steps on the
  torch twin) until every BatchNormalization sees the batch mean and variance of its running
  statistics (the statistic loss of DeepInversion, Yin et al. 2020): the running statistics are
  the one trace of the training data a model carries, and activations that match them make the
  layer Hessians of OBSPA far closer to the real ones than plain noise does. The cost is bounded
  (``synth_plan``): the samples optimized together hold their autograd graphs (at most
  ``SYNTH_BYTES`` of activations), and the whole synthesis spends at most ``SYNTH_MACS``
  (samples x steps x MACs per sample; steps go down to ``SYNTH_MIN_STEPS`` before samples go
  down): a 640x640 detector gets one sample and ~20 steps, a digits CNN the full 32 x 50. The
  samples run through the twin as one batch when the twin gives the same activations that way
  (most graphs do not depend on the batch size they were exported at);
- other models, or when the twin cannot run the graph: ``data.synthetic_inputs`` (Gaussian after
  the model's own normalization, valid token ids, masks of ones), a new seed per batch.

Capture adds the wanted intermediate tensors as graph outputs of a copy of the model and runs it
in onnxruntime: the original model, exactly as deployed, is what criteria such as OBSPA measure.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto, helper

from pruning_core.errors import DataError
from pruning_core.ir.graph import Graph
from pruning_core.ir.weights import LightModel
from pruning_core.runtime import data as data_mod
from pruning_core.runtime import metrics

SYNTHESIZE = True    # False: plain Gaussian data-free inputs even for BatchNorm models (ablation)
SYNTH_SAMPLES = 32   # data-free samples synthesized for models with BatchNorm
SYNTH_STEPS = 50     # Adam steps on those inputs
SYNTH_LR = 0.1       # in the model's normalized input space (unit scale)
SYNTH_MACS = 5e10    # forward MACs the whole synthesis may spend (samples x steps x MACs per sample)
SYNTH_MIN_STEPS = 15  # steps are cut down to this before samples are
SYNTH_BYTES = 512 << 20  # activations of the samples optimized together (their autograd graphs)


@dataclass
class Batch:
    feeds: dict[str, np.ndarray]
    class_labels: np.ndarray | None = None


def batch_size(b: Batch) -> int:
    return len(next(iter(b.feeds.values()))) if b.feeds else 0


def model_batch(g: Graph) -> int:
    """The batch size the normalized graph runs at (leading dim of its first input)."""
    for name in g.inputs:
        shape = g.shape(name)
        if shape:
            return int(shape[0])
    return 1


def batches(g: Graph, data: dict[str, np.ndarray] | None = None, class_labels: np.ndarray | None = None,
            samples: int = 128, seed: int = 0,
            progress: Callable[[float], None] | None = None) -> Iterator[Batch]:
    """Up to ``samples`` samples in batches of the model's batch size.

    With data, the last batch is filled up by wrapping around (the model's batch size is fixed).
    Without data: for BatchNorm models ``min(samples, SYNTH_SAMPLES)`` synthesized samples (rounded
    up to whole batches, fewer for costly models: ``synth_plan``),
    else ``ceil(samples / batch)`` Gaussian batches, each with its own seed. ``progress(fraction)``
    follows the synthesis steps."""
    bsz = model_batch(g)
    if data is None:
        synth = bn_matched(g, samples, seed, progress=progress)
        if synth is not None:
            yield from synth
            return
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
                    None if class_labels is None else class_labels[idx])


def cached(cache: dict, g: Graph, data: dict[str, np.ndarray] | None, class_labels: np.ndarray | None,
           samples: int, seed: int, progress: Callable[[float], None] | None = None) -> list[Batch]:
    """``batches`` materialized once per scoring run (``ScoreContext.cache``): every pass of a
    criterion sees the same samples, and data-free synthesis runs once."""
    if "calib_batches" not in cache:
        cache["calib_batches"] = list(batches(g, data, class_labels, samples, seed, progress))
    return cache["calib_batches"]


def _bn_nodes(g: Graph) -> list:
    return [n for n in g.nodes if n.op_type == "BatchNormalization" and len(n.input) >= 5
            and n.input[3] in g.inits and n.input[4] in g.inits]


def _float_inputs(g: Graph) -> list[str]:
    return [n for n in g.inputs if helper.tensor_dtype_to_np_dtype(g.dtypes.get(n, 1)).kind == "f"]


def synthesizes(g: Graph) -> bool:
    """Whether data-free batches of this model are BatchNorm-matched (else Gaussian)."""
    return SYNTHESIZE and bool(_bn_nodes(g)) and bool(_float_inputs(g))


# Synthesized batches of recent models (a worker prunes one model with several specs; the bench
# runs every criterion): keyed by the model file's identity, input shapes, samples, seed, steps.
_SYNTH_CACHE: OrderedDict[tuple, list[Batch]] = OrderedDict()
_SYNTH_CACHE_SIZE = 4


def _synth_key(g: Graph, samples: int, seed: int, steps: int) -> tuple | None:
    if g.path is None:
        return None
    try:
        st = os.stat(g.path)
    except OSError:
        return None
    shapes = tuple((n, tuple(g.shape(n))) for n in g.inputs)
    return (str(Path(g.path).resolve()), st.st_mtime_ns, st.st_size, shapes, samples, seed, steps)


def _act_bytes(g: Graph) -> int:
    """Bytes of every node output of one model batch (float32): what a forward pass holds for
    its backward pass, about."""
    total = 0
    for n in g.nodes:
        for o in n.output:
            try:
                total += int(np.prod(g.shape(o), dtype=np.int64)) * 4
            except KeyError:
                continue
    return total


def synth_plan(g: Graph, samples: int, steps: int) -> tuple[int, int]:
    """(model batches, steps) of a bounded synthesis: at most ``min(samples, SYNTH_SAMPLES)``
    samples, their activations within ``SYNTH_BYTES``, and samples x steps x MACs within
    ``SYNTH_MACS``, steps cut first (down to ``SYNTH_MIN_STEPS``), then samples (down to one
    model batch), then steps again (down to one)."""
    bsz = model_batch(g)
    n = max(1, min(-(-min(samples, SYNTH_SAMPLES) // bsz), SYNTH_BYTES // max(1, _act_bytes(g))))
    macs = max(1, metrics.count_macs(g))  # per model batch
    if n * steps * macs > SYNTH_MACS:
        floor = min(steps, SYNTH_MIN_STEPS)
        n = max(1, min(n, int(SYNTH_MACS // (floor * macs))))
        steps = max(1, min(steps, int(SYNTH_MACS // (n * macs))))
    return n, steps


def bn_matched(g: Graph, samples: int = SYNTH_SAMPLES, seed: int = 0, steps: int | None = None,
               progress: Callable[[float], None] | None = None) -> list[Batch] | None:
    """Data-free inputs whose BatchNorm batch statistics match the running statistics; None when
    the model has no BatchNorm with constant statistics, no float input, or the twin cannot run it."""
    if not synthesizes(g):
        return None
    steps = SYNTH_STEPS if steps is None else steps
    key = _synth_key(g, samples, seed, steps)
    if key is not None and key in _SYNTH_CACHE:
        _SYNTH_CACHE.move_to_end(key)
        return _SYNTH_CACHE[key]
    out = _synthesize(g, samples, seed, steps, progress)
    if key is not None and out is not None:
        _SYNTH_CACHE[key] = out
        while len(_SYNTH_CACHE) > _SYNTH_CACHE_SIZE:
            _SYNTH_CACHE.popitem(last=False)
    return out


def _synthesize(g: Graph, samples: int, seed: int, steps: int,
                progress: Callable[[float], None] | None = None) -> list[Batch] | None:
    bns, floats = _bn_nodes(g), _float_inputs(g)
    import torch

    from pruning_core.errors import UnsupportedOpError
    from pruning_core.twin.executor import OnnxTwin

    try:
        twin = OnnxTwin(g.full_model())
    except UnsupportedOpError:
        return None
    twin.eval()
    twin.requires_grad_(False)
    bsz = model_batch(g)
    k, steps = synth_plan(g, samples, steps)  # model batches per statistics batch
    starts = [data_mod.synthetic_inputs(g, batch=bsz, seed=seed + 7919 * (i + 1)) for i in range(k)]
    # Optimize z in the model's normalized input space, x = (z - b) / a, so one learning rate fits.
    affine = {}
    for n in floats:
        ab = data_mod.input_affine(g, n, list(g.shape(n)))
        a, b = ab if ab is not None else (np.ones(1), np.zeros(1))
        affine[n] = (torch.tensor(np.array(a, np.float32)), torch.tensor(np.array(b, np.float32)))
    zs = [{n: torch.tensor(st[n] * affine[n][0].numpy() + affine[n][1].numpy(), dtype=torch.float32,
                           requires_grad=True) for n in floats} for st in starts]
    opt = torch.optim.Adam([z for d in zs for z in d.values()], lr=SYNTH_LR)
    names = [b.input[0] for b in bns]
    target = [(torch.tensor(np.array(g.inits[b.input[3]], np.float32)),
               torch.tensor(np.array(g.inits[b.input[4]], np.float32))) for b in bns]

    def feeds(i: int) -> dict:
        out = {n: torch.as_tensor(v) for n, v in starts[i].items()}
        out.update({n: (z - affine[n][1]) / affine[n][0] for n, z in zs[i].items()})
        return out

    def whole() -> dict:
        parts = [feeds(i) for i in range(k)]
        return {n: torch.cat([f[n] for f in parts]) for n in g.inputs}

    big = _batched_twin(g, twin, k, [feeds(i) for i in range(k)], whole(), names) if k > 1 else None
    for step in range(steps):
        if progress is not None:
            progress(step / steps)
        caps = [big.run(whole(), capture=names)[1]] if big is not None else \
            [twin.run(feeds(i), capture=names)[1] for i in range(k)]
        loss = torch.zeros(())
        for name, (rm, rv) in zip(names, target, strict=True):
            act = torch.cat([c[name] for c in caps]).float()
            dims = [d for d in range(act.ndim) if d != 1]
            loss = loss + torch.linalg.vector_norm(act.mean(dims) - rm) \
                + torch.linalg.vector_norm(act.var(dims, unbiased=False) - rv)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = []
    with torch.no_grad():
        for i in range(k):
            f = feeds(i)
            out.append(Batch({n: f[n].numpy().astype(starts[i][n].dtype) if n in floats else starts[i][n]
                              for n in g.inputs}))
    return out


def _batched_twin(g: Graph, twin, k: int, parts: list[dict], whole: dict, names: list[str]):
    """A twin that runs the ``k`` model batches stacked into one and gives the activations
    ``twin`` gives batch by batch: ``twin`` itself when the graph does not depend on its batch
    size, else the graph normalized again at the bigger batch (a Reshape folded for batch 1 is
    folded for the bigger one: models with a dynamic batch axis); None when neither does (then
    the synthesis runs batch by batch, ``k`` times the Python overhead per step)."""
    import torch

    from pruning_core.twin.executor import OnnxTwin

    with torch.no_grad():  # the first two batches suffice: a batch-size dependence shows in each
        ref = [twin.run(f, capture=names)[1] for f in parts[:2]]

    def same(cand) -> bool:
        try:
            with torch.no_grad():
                got = cand.run(whole, capture=names)[1]
        except Exception:  # an op that cannot take the bigger batch
            return False
        for n in names:
            want = torch.cat([c[n] for c in ref]).float()
            if got[n].shape[1:] != want.shape[1:] or got[n].shape[0] != k * ref[0][n].shape[0]:
                return False
            have = got[n][:len(want)].float()
            if not torch.allclose(have, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()) + 1e-6):
                return False
        return True

    if same(twin):
        return twin
    try:
        from pruning_core.ir.graph import reload

        big = OnnxTwin(reload(g, {n: [len(whole[n]), *g.shape(n)[1:]] for n in g.inputs}).full_model())
    except Exception:  # a static batch axis, or an op the twin lacks at that size
        return None
    big.eval()
    big.requires_grad_(False)
    return big if same(big) else None


def with_outputs(g: Graph, tensors: Iterable[str]) -> LightModel:
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
    return LightModel(m, g.inits)


def session(model: LightModel):
    """An onnxruntime session on every core whose threads do not spin between runs: the caller
    does heavy numpy / torch work between runs, and spinning threads would starve it."""
    return metrics.session(model, threads=0, spin=False)


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
    sess = session(g.light())
    for b in source:
        yield b, sess.run(None, b.feeds)
