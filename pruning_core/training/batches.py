"""Batches for the torch twin: the device they run on, numpy feeds as tensors, and ``BatchSource``
(training batches of any size for a graph whose shapes may be folded for one batch size).

Recovery and AutoBot draw random batches from a ``BatchSource``; the gradient criteria run the
fixed calibration batches (``ScoreContext.batches``) through ``passes.batch_grads``. Both put
their feeds on the spec's device with ``to_torch``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from pruning_core.errors import DataError
from pruning_core.ir.graph import Graph
from pruning_core.runtime import calibration
from pruning_core.runtime import data as data_mod

Tensor = torch.Tensor
Run = Callable[[dict[str, Tensor]], tuple[Tensor, ...]]


def device_for(device: Literal["cpu", "cuda"] | None) -> torch.device:
    """``spec.device`` when it can be honoured; CPU otherwise (and by default)."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def to_torch(feeds: dict[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    return {k: torch.as_tensor(np.ascontiguousarray(v)).to(device) for k, v in feeds.items()}


@dataclass
class Chunk:
    """One model batch worth of inputs (and class labels), or a whole batch when the graph runs
    any size."""

    feeds: dict[str, np.ndarray]
    class_labels: np.ndarray | None = None


@dataclass
class Pass:
    """What one call of the twin computes: ``feeds`` as torch tensors; ``stacked`` when they hold
    several model batches along a new leading axis (run under ``torch.func.vmap``)."""

    feeds: dict[str, Tensor]
    class_labels: np.ndarray | None
    stacked: bool = False


class BatchSource:
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

    With data, batches are drawn from it (with its class labels). Without data, inputs are
    data-free: BatchNorm-matched samples where the model has BatchNorm (``calibration.bn_matched``),
    mixed with fresh Gaussian inputs after the model's own normalization (``data.synthetic_inputs``,
    a new seed per draw) so that training never sees the same few samples over and over.
    """

    def __init__(self, g: Graph, data: dict[str, np.ndarray] | None, class_labels: np.ndarray | None,
                 seed: int, samples: int = 128) -> None:
        self.g, self.seed = g, seed
        self.model_batch = calibration.model_batch(g)
        self.mode = "chunks"
        self.class_labels = None if class_labels is None else np.asarray(class_labels)
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
            class_labels = None if self.class_labels is None else self.class_labels[idx]
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
            class_labels = None
        if self.flexible:
            return [Chunk(feeds, class_labels)]
        mb = self.model_batch
        return [Chunk({k: v[i:i + mb] for k, v in feeds.items()},
                      None if class_labels is None else class_labels[i:i + mb])
                for i in range(0, size, mb)]

    def passes(self, chunks: list[Chunk], device: torch.device) -> list[Pass]:
        if self.mode == "vmap" and len(chunks) > 1:
            feeds = {k: torch.stack([torch.as_tensor(np.ascontiguousarray(c.feeds[k])) for c in chunks]).to(device)
                     for k in chunks[0].feeds}
            class_labels = (None if chunks[0].class_labels is None
                            else np.concatenate([c.class_labels for c in chunks]))
            return [Pass(feeds, class_labels, stacked=True)]
        return [Pass(to_torch(c.feeds, device), c.class_labels) for c in chunks]

    def next_passes(self, size: int, rng: np.random.Generator, device: torch.device) -> list[Pass]:
        """The passes of one training step: ``draw`` then ``passes``."""
        return self.passes(self.draw(size, rng), device)

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
