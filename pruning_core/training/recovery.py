"""Recovery: fine-tune the pruned model by distillation from the original, on the torch twin.

``recover(original, pruned, spec, data, labels, progress)`` trains every weight of the pruned model
(``OnnxTwin`` parameters; BatchNorm running statistics stay as they are, the twin always computes
inference semantics) to reproduce the original model's outputs: KL divergence on logits
(``[batch, classes]`` outputs), MSE normalized by the teacher's variance on any other float
output; plus cross-entropy (integer labels) or MSE (float labels) on the first output when labels
exist. Adam, ``spec.recover`` steps / lr / batch size, progress per step; the trained weights are
written back into the pruned ONNX model, which keeps its graph unchanged (only initializer values
change), so it still passes the checker and runs in onnxruntime.

Without data, inputs are data-free: BatchNorm-matched samples where the model has BatchNorm
(``calibration.bn_matched``), mixed with fresh Gaussian inputs after the model's own normalization
(``data.synthetic_inputs``, a new seed per step) so that training never sees the same few samples
over and over.

The helpers here (``Source``: batches of any size for a graph whose shapes may be folded for one
batch size -- one pass, a vmapped pass over model batches, or a loop; ``distill_loss`` and
``supervised_loss``) are shared with AutoBot's gate training (``importance/autobot.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from onnx import ModelProto

from pruning_core.errors import DataError
from pruning_core.ir.graph import Graph
from pruning_core.runtime import calibration
from pruning_core.runtime import data as data_mod

Tensor = torch.Tensor
ProgressFn = Callable[[float, str | None], None]


def device_for(spec) -> torch.device:
    """``spec.device`` when it can be honoured; CPU otherwise (and by default)."""
    if getattr(spec, "device", None) == "cuda" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


# ------------------------------------------------------------------------------ batches


@dataclass
class Chunk:
    """One model batch worth of inputs (and labels), or a whole batch when the graph runs any size."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None


@dataclass
class Pass:
    """What one call of the twin computes: ``feeds`` as torch tensors; ``stacked`` when they hold
    several model batches along a new leading axis (run under ``torch.func.vmap``)."""

    feeds: dict[str, Tensor]
    labels: np.ndarray | None
    stacked: bool = False


Run = Callable[[dict[str, Tensor]], tuple[Tensor, ...]]


class Source:
    """Training batches of a requested size, and how to run them through a twin.

    The normalized graph has concrete input shapes and shape constants folded for the model's own
    batch size (``Reshape`` to ``[1, -1]`` ...), so a bigger batch may not run -- or worse, run with
    samples mixed. ``probe`` picks the ``mode``:

    - ``"flexible"``: one pass at any batch size gives the same per-sample outputs as passes at
      the model's batch (dynamic-batch exports): one pass per batch;
    - ``"vmap"``: the batch is cut into model batches, stacked on a new leading axis and run in one
      vectorized pass (``torch.func.vmap``: inside it every op sees one model batch, so folded
      shapes hold) -- a batch-1 export trains as fast as a dynamic one;
    - ``"chunks"``: one pass per model batch (graphs vmap cannot run: data-dependent control flow).

    Outputs of a stacked pass are flattened back to ``[chunks * batch, ...]``, so losses are the
    same in every mode (means over equal-size chunks).
    """

    def __init__(self, g: Graph, data: dict[str, np.ndarray] | None, labels: np.ndarray | None,
                 seed: int, samples: int = 128) -> None:
        self.g, self.seed = g, seed
        self.model_batch = calibration.model_batch(g)
        self.mode = "chunks"
        self.labels = None if labels is None else np.asarray(labels)
        if data is not None:
            missing = [n for n in g.inputs if n not in data]
            if missing:
                raise DataError(f"data lacks input(s) {missing}; the model's inputs are {g.inputs}")
            self.pool: dict[str, np.ndarray] | None = {n: np.asarray(data[n]) for n in g.inputs}
            self.n = len(next(iter(self.pool.values())))
            if self.n == 0:
                raise DataError("calibration data holds no samples")
            self.fresh = False
        else:
            # BatchNorm-matched samples carry the statistics of the training data; Gaussian
            # samples are unlimited. Use both (bn_matched is None for models without BatchNorm).
            synth = calibration.bn_matched(g, samples, seed)
            if synth:
                self.pool = {n: np.concatenate([b.feeds[n] for b in synth]) for n in g.inputs}
                self.n = len(next(iter(self.pool.values())))
            else:
                self.pool, self.n = None, 0
            self.fresh = True
        self._draws = 0

    @property
    def flexible(self) -> bool:
        return self.mode == "flexible"

    def draw(self, size: int, rng: np.random.Generator) -> list[Chunk]:
        """``size`` samples (rounded up to whole model batches when not flexible)."""
        size = max(1, int(size))
        if not self.flexible:
            size = self.model_batch * max(1, -(-size // self.model_batch))
        self._draws += 1
        if not self.fresh:
            assert self.pool is not None
            idx = rng.choice(self.n, size, replace=self.n < size)
            feeds = {k: np.ascontiguousarray(v[idx]) for k, v in self.pool.items()}
            labels = None if self.labels is None else self.labels[idx]
        else:
            n_pool = size // 2 if self.pool is not None else 0
            fresh = data_mod.synthetic_inputs(self.g, batch=size - n_pool,
                                              seed=self.seed + 104729 * self._draws)
            if n_pool:
                assert self.pool is not None
                idx = rng.choice(self.n, n_pool, replace=self.n < n_pool)
                feeds = {k: np.concatenate([self.pool[k][idx], fresh[k]]) for k in self.g.inputs}
            else:
                feeds = fresh
            labels = None
        if self.flexible:
            return [Chunk(feeds, labels)]
        mb = self.model_batch
        return [Chunk({k: v[i:i + mb] for k, v in feeds.items()}, None if labels is None else labels[i:i + mb])
                for i in range(0, size, mb)]

    def passes(self, chunks: list[Chunk], device: torch.device) -> list[Pass]:
        if self.mode == "vmap" and len(chunks) > 1:
            feeds = {k: torch.stack([torch.as_tensor(np.ascontiguousarray(c.feeds[k])) for c in chunks]).to(device)
                     for k in chunks[0].feeds}
            labels = None if chunks[0].labels is None else np.concatenate([c.labels for c in chunks])
            return [Pass(feeds, labels, stacked=True)]
        return [Pass(to_torch(c.feeds, device), c.labels) for c in chunks]

    @staticmethod
    def call(run: Run, p: Pass) -> tuple[Tensor, ...]:
        if not p.stacked:
            return run(p.feeds)
        outs = torch.func.vmap(run)(p.feeds)
        return tuple(o.flatten(0, 1) if o.ndim >= 2 else o for o in outs)

    def probe(self, twins: Sequence[Run], device: torch.device) -> str:
        """Set ``mode`` (see the class doc) from two model batches run every way, per twin."""
        mb = self.model_batch
        feeds = data_mod.synthetic_inputs(self.g, batch=2 * mb, seed=self.seed + 1)
        halves = [Chunk({k: v[i:i + mb] for k, v in feeds.items()}) for i in (0, mb)]

        def same(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
            return len(a) == len(b) and all(
                x.shape == y.shape and bool(torch.allclose(
                    x.double(), y.double(), rtol=1e-4, atol=1e-4 * max(1.0, float(x.abs().max()) if x.numel() else 1.0)))
                for x, y in zip(a, b, strict=True))

        def agrees(how: str) -> bool:
            with torch.no_grad():
                for run in twins:
                    parts = [run(to_torch(c.feeds, device)) for c in halves]
                    if any(o.ndim == 0 for o in parts[0]):
                        return False
                    ref = tuple(torch.cat([parts[0][j], parts[1][j]]) for j in range(len(parts[0])))
                    try:
                        if how == "flexible":
                            got = run(to_torch(feeds, device))
                        else:
                            self.mode = "vmap"
                            got = self.call(run, self.passes(halves, device)[0])
                    except Exception:  # folded shapes refuse the batch / vmap cannot run an op
                        return False
                    if not same(ref, got):
                        return False
            return True

        self.mode = "flexible" if agrees("flexible") else "vmap" if agrees("vmap") else "chunks"
        return self.mode


def to_torch(feeds: dict[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    return {k: torch.as_tensor(np.ascontiguousarray(v)).to(device) for k, v in feeds.items()}


# ------------------------------------------------------------------------------ losses


def _is_logits(t: Tensor) -> bool:
    return t.is_floating_point() and t.ndim == 2 and t.shape[1] >= 2


def _is_probabilities(t: Tensor) -> bool:
    # a softmax head already applied: compare distributions directly, not softmax(softmax)
    return bool((t >= 0).all()) and bool(torch.allclose(t.sum(1), torch.ones_like(t[:, 0]), atol=1e-3))


def distill_loss(student: Sequence[Tensor], teacher: Sequence[Tensor], temperature: float = 1.0) -> Tensor:
    """KL(teacher || student) on logits / probabilities, normalized MSE on other float outputs;
    averaged over the float outputs."""
    terms = []
    for s, t in zip(student, teacher, strict=True):
        if not s.is_floating_point():
            continue
        s, t = s.float(), t.detach().float()
        if _is_logits(t):
            if _is_probabilities(t):
                terms.append(F.kl_div(s.clamp_min(1e-8).log(), t, reduction="batchmean"))
            else:
                tau = temperature
                terms.append(F.kl_div(F.log_softmax(s / tau, 1), F.log_softmax(t / tau, 1),
                                      reduction="batchmean", log_target=True) * tau * tau)
        else:
            var = t.var() if t.numel() > 1 else t.new_ones(())
            terms.append(F.mse_loss(s, t) / var.clamp_min(1e-8))
    if not terms:
        raise DataError("the model has no float output to distill")
    return torch.stack(terms).mean()


def supervised_loss(out: Tensor, labels: np.ndarray) -> Tensor:
    """Cross-entropy for integer labels (classes on the last axis), MSE for float labels."""
    y = torch.as_tensor(labels).to(out.device)
    if y.dtype.is_floating_point:
        return F.mse_loss(out.float(), y.float().reshape(out.shape))
    return F.cross_entropy(out.float().reshape(-1, out.shape[-1]), y.reshape(-1).long(), ignore_index=-100)


# ------------------------------------------------------------------------------ recovery


def recover(original_model: ModelProto, pruned_model: ModelProto, spec, data: dict[str, np.ndarray] | None,
            labels: np.ndarray | None, progress: ProgressFn | None = None) -> ModelProto:
    """The pruned model with its weights fine-tuned to match the original (see module doc)."""
    from pruning_core.ir import graph as graph_mod
    from pruning_core.twin.executor import OnnxTwin

    opts = spec.recover
    device = device_for(spec)
    torch.manual_seed(int(spec.seed))
    g = graph_mod.load(original_model)
    source = Source(g, data, labels, int(spec.seed), spec.calibration.samples)

    teacher = OnnxTwin(original_model).to(device).eval()
    teacher.requires_grad_(False)
    student = OnnxTwin(pruned_model).to(device).eval()
    params = [p for _, p in student.named_onnx_parameters()]
    if not params:
        return pruned_model

    def run_teacher(f: dict[str, Tensor]) -> tuple[Tensor, ...]:
        return teacher(**f)

    def run_student(f: dict[str, Tensor]) -> tuple[Tensor, ...]:
        return student(**f)

    source.probe([run_teacher, run_student], device)

    opt = torch.optim.Adam(params, lr=opts.lr)
    rng = np.random.default_rng(int(spec.seed))
    start = [p.detach().clone() for p in params]
    skipped = 0
    for step in range(opts.steps):
        passes = source.passes(source.draw(opts.batch_size, rng), device)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for k, p in enumerate(passes):
            with torch.no_grad():
                t_out = source.call(run_teacher, p)
            if progress is not None:  # a step of a big model is long: report inside it too
                progress((step + (k + 0.5) / len(passes)) / opts.steps, None)
            s_out = source.call(run_student, p)
            loss = distill_loss(s_out, t_out)
            if p.labels is not None:
                loss = loss + supervised_loss(s_out[0], p.labels)
            loss = loss / len(passes)
            loss.backward()
            total += loss.detach().item()
        if math.isfinite(total):
            opt.step()
        else:  # one bad batch must not poison the weights
            skipped += 1
        if progress is not None:
            progress((step + 1) / opts.steps, f"step {step + 1}/{opts.steps} loss {total:.4g}")
    if skipped == opts.steps:
        raise DataError("recovery diverged: every step gave a non-finite loss")
    with torch.no_grad():  # a run of non-finite steps must not ship NaN weights either
        for p, p0 in zip(params, start, strict=True):
            if not torch.isfinite(p).all():
                p.copy_(p0)
    return student.to("cpu").export_initializers(pruned_model)
