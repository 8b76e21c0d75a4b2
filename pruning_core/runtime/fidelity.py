"""Fidelity of the pruned model, measured where the user's task lives.

``prepare`` reads the user's data and splits it: calibration samples for the criterion and
recovery, and an evaluation set they never see (``holdout``: a fraction of the data, or a separate
evaluation file). Without data, the evaluation set is the synthetic batch the pipeline verifies
on, and the report says so (``"inputs": "synthetic"``).

``Evaluation.measure`` runs the original (the normalized graph, weights fed in place) and a
pruned model side by side, one model batch at a time, and accumulates over the whole set:

- ``cosine``: cosine similarity of each output over all samples, the lowest over the outputs;
- ``max_rel_error``: max |pruned - original| / max(1, max |original|), the highest over outputs;
- ``top1_agreement``: how often the arg-max of the class-score output matches the original's
  (per sample for ``[N, C]`` outputs, per position for per-token ``[N, T, C]`` outputs), on the
  first such output (one named like logits / scores / probabilities if there is one);
- ``accuracy``: ``{"before", "after"}`` against integer labels (``-100`` ignored), when the data
  has labels.

At most ``MAX_EVAL_SAMPLES`` samples, and no more than ``BUDGET_S`` seconds of evaluation planned
from the first batch; the report carries the count (``samples``, and ``inputs``).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto, helper

from pruning_core.errors import DataError
from pruning_core.ir.graph import Graph
from pruning_core.ir.weights import LightModel
from pruning_core.runtime import data as data_mod
from pruning_core.runtime import metrics
from pruning_core.runtime.holdout import MAX_EVAL_SAMPLES, holdout_count
from pruning_core.spec import PruneSpec

BUDGET_S = 60.0  # evaluation time of one model pair, planned from the first batch
CLASS_NAMES = re.compile(r"logit|score|prob|class|pred", re.IGNORECASE)
IGNORE_LABEL = -100
FIELDS = ("inputs", "samples", "cosine", "max_rel_error", "top1_agreement", "top1_output", "accuracy")

Arrays = dict[str, np.ndarray]
Model = str | os.PathLike[str] | LightModel | ModelProto


def skipped() -> dict[str, Any]:
    """The fidelity entry when nothing was measured (``spec.measure`` off)."""
    return {k: None for k in FIELDS} | {"samples": 0}


@dataclass
class EvalSet:
    """What fidelity is measured on: ``kind`` is ``synthetic``, ``held-out data``, ``eval data`` or
    ``calibration data`` (no split: the samples the criterion saw); ``available`` counts the
    samples before the cap."""

    feeds: Arrays
    labels: np.ndarray | None
    kind: str
    available: int


def prepare(g: Graph, spec: PruneSpec, data: str | os.PathLike[str] | None,
            eval_data: str | os.PathLike[str] | None = None,
            ) -> tuple[Arrays | None, np.ndarray | None, Evaluation]:
    """(calibration arrays, their labels, the evaluation) from the user's files. Every check of
    the data runs here, before any work: a bad file or split raises ``DataError``."""
    calib, labels = data_mod.load_npz(data, g) if data is not None else (None, None)
    n = None if calib is None else _count(calib)
    k = holdout_count(n, spec.calibration.eval_fraction, separate_eval=eval_data is not None)
    if eval_data is not None:
        feeds, ev_labels = data_mod.load_npz(eval_data, g, what="eval data")
        ev = EvalSet(feeds, ev_labels, "eval data", _count(feeds))
    elif calib is not None and k:
        assert n is not None
        held = np.random.default_rng(spec.seed).permutation(n)[:k]
        calib, labels, feeds, ev_labels = _split(calib, labels, held)
        ev = EvalSet(feeds, ev_labels, "held-out data", k)
    elif calib is not None:
        ev = EvalSet(calib, labels, "calibration data", _count(calib))
    else:
        ev = EvalSet(data_mod.synthetic_inputs(g, seed=spec.seed), None, "synthetic", 0)
    evaluation = Evaluation(g, ev)
    evaluation.check_labels()
    return calib, labels, evaluation


def _split(arrays: Arrays, labels: np.ndarray | None, held: np.ndarray,
           ) -> tuple[Arrays, np.ndarray | None, Arrays, np.ndarray | None]:
    """(calibration arrays, labels, evaluation arrays, labels): the ``held`` rows moved to the
    tail in place (a row swap each, so the data is never copied whole), then both halves are views."""
    n, k = _count(arrays), len(held)
    is_held = np.zeros(n, dtype=bool)
    is_held[held] = True
    holes = np.nonzero(is_held[: n - k])[0]              # held rows in the calibration part
    fillers = np.nonzero(~is_held[n - k:])[0] + (n - k)  # calibration rows in the tail
    arrays = {name: a if a.flags.writeable else a.copy() for name, a in arrays.items()}
    if labels is not None and not labels.flags.writeable:
        labels = labels.copy()
    for a in [*arrays.values(), *([labels] if labels is not None else [])]:
        a[holes], a[fillers] = a[fillers], a[holes]
    head = {name: a[: n - k] for name, a in arrays.items()}
    tail = {name: a[n - k:] for name, a in arrays.items()}
    return head, None if labels is None else labels[: n - k], tail, None if labels is None else labels[n - k:]


def _count(arrays: Arrays) -> int:
    return len(next(iter(arrays.values()))) if arrays else 0


def _model_batch(g: Graph) -> int:
    for name in g.inputs:
        shape = g.shape(name)
        if shape:
            return int(shape[0])
    return 1


@dataclass
class _Sums:
    """Running sums of one output over the evaluation set."""

    dot: float = 0.0
    ref_sq: float = 0.0
    out_sq: float = 0.0
    max_diff: float = 0.0
    max_ref: float = 0.0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        if a64.shape != b64.shape:
            raise DataError(f"the pruned model's output has {b64.size} values where the original's has {a64.size}")
        if not a64.size:
            return
        self.dot += float(a64 @ b64)
        self.ref_sq += float(a64 @ a64)
        self.out_sq += float(b64 @ b64)
        self.max_diff = max(self.max_diff, float(np.abs(a64 - b64).max()))
        self.max_ref = max(self.max_ref, float(np.abs(a64).max()))

    def cosine(self) -> float:
        denom = np.sqrt(self.ref_sq) * np.sqrt(self.out_sq)
        return float(self.dot / denom) if denom > 0 else 1.0

    def rel_error(self) -> float:
        return self.max_diff / max(1.0, self.max_ref)


@dataclass
class _Counts:
    agree: int = 0
    positions: int = 0
    correct_ref: int = 0
    correct_out: int = 0
    labelled: int = 0


class Evaluation:
    """Fidelity of pruned models against the original on one evaluation set (module doc)."""

    def __init__(self, g: Graph, ev: EvalSet) -> None:
        self.g, self.ev = g, ev
        self.batch = _model_batch(g)
        self.planned = min(_count(ev.feeds), MAX_EVAL_SAMPLES) if ev.kind != "synthetic" else _count(ev.feeds)
        self.budgeted = False
        self.class_output = self._class_output()
        self.before_recovery: dict[str, Any] | None = None

    # -- what is measured --------------------------------------------------------------------

    def _class_output(self) -> int | None:
        """Index of the output whose last axis looks like class scores: float, ``[N, C]`` or
        ``[N, T, C]`` with C >= 2; one named like logits / scores first."""
        found = []
        for i, name in enumerate(self.g.outputs):
            shape = self.g.shapes.get(name)
            dtype = helper.tensor_dtype_to_np_dtype(self.g.dtypes[name]) if name in self.g.dtypes else None
            if shape is None or dtype is None or dtype.kind != "f" or len(shape) not in (2, 3):
                continue
            if int(shape[0]) == self.batch and int(shape[-1]) >= 2:
                found.append(i)
        named = [i for i in found if CLASS_NAMES.search(self.g.outputs[i])]
        return (named or found or [None])[0]

    def _labels_usable(self) -> bool:
        lab = self.ev.labels
        return lab is not None and self.class_output is not None and lab.dtype.kind in "iu"

    def check_labels(self) -> None:
        """Integer labels must fit the class output: one per sample (``[N, C]``) or per position
        (``[N, T, C]``), each a class index or -100 (ignored)."""
        if not self._labels_usable():
            return
        assert self.ev.labels is not None and self.class_output is not None
        name = self.g.outputs[self.class_output]
        shape = self.g.shape(name)
        lab = self.ev.labels
        want = (len(lab),) + tuple(shape[1:-1])
        what = "eval data" if self.ev.kind == "eval data" else "calibration data"
        if lab.shape != want:
            raise DataError(f"the labels of the {what} have shape {lab.shape}, but the model's output {name!r} "
                            f"of shape {tuple(shape)} needs labels of shape {want}")
        bad = (lab != IGNORE_LABEL) & ((lab < 0) | (lab >= shape[-1]))
        if bad.any():
            raise DataError(f"the labels of the {what} hold {int(lab[bad][0])}, but the model's output {name!r} "
                            f"has {shape[-1]} classes (labels must be 0..{shape[-1] - 1}, or -100 to ignore)")

    def label(self, n: int) -> str:
        if self.ev.kind == "synthetic":
            return "synthetic"
        count = f"{n} of {self.ev.available} samples" if n < self.ev.available else f"{n} samples"
        suffix = ", also seen by the criterion" if self.ev.kind == "calibration data" else ""
        return f"{self.ev.kind} ({count}{suffix})"

    # -- running -----------------------------------------------------------------------------

    def _batch(self, start: int, n: int) -> tuple[Arrays, np.ndarray | None, int]:
        """(feeds, labels, valid rows) of the model batch at ``start`` of the first ``n`` samples;
        the last batch is filled up by wrapping around (the model's batch size is fixed) and its
        extra rows are left out of the sums."""
        idx = np.arange(start, start + self.batch) % n
        labels = None if self.ev.labels is None else self.ev.labels[idx]
        return ({k: np.ascontiguousarray(v[idx]) for k, v in self.ev.feeds.items()}, labels,
                min(self.batch, n - start))

    def measure(self, pruned: Model) -> dict[str, Any]:
        """Fidelity of ``pruned`` (a path, LightModel or ModelProto) against the original. The
        first call plans the sample count within ``BUDGET_S``; later calls use the same samples."""
        ref_sess = metrics.session(self.g.light(), threads=0, spin=False)
        out_sess = metrics.session(pruned if isinstance(pruned, LightModel | ModelProto) else str(Path(pruned)),
                                   threads=0, spin=False)
        sums: list[_Sums] = []
        counts = _Counts()
        n, start, t0 = self.planned, 0, time.perf_counter()
        while start < n:
            feeds, labels, valid = self._batch(start, n)
            self._add(sums, counts, ref_sess.run(None, feeds), out_sess.run(None, feeds), labels, valid)
            start += self.batch
            if not self.budgeted:
                self.budgeted = True
                most = max(1, int(BUDGET_S / max(time.perf_counter() - t0, 1e-6))) * self.batch
                self.planned = n = min(n, most)
        del ref_sess, out_sess
        return self._result(sums, counts, n)

    def measure_unrecovered(self, pruned: Model) -> None:
        """Fidelity of the pruned model before recovery (kept as ``before_recovery``)."""
        self.before_recovery = self.measure(pruned)

    def _add(self, sums: list[_Sums], counts: _Counts, ref: list[np.ndarray], out: list[np.ndarray],
             labels: np.ndarray | None, valid: int) -> None:
        if not sums:
            sums.extend(_Sums() for _ in ref)
        for j, (a, b) in enumerate(zip(ref, out, strict=True)):
            if valid < self.batch and a.ndim and a.shape[0] == self.batch:
                a, b = a[:valid], b[:valid]
            sums[j].add(a, b)
        k = self.class_output
        if k is None or ref[k].ndim not in (2, 3) or ref[k].shape[0] != self.batch:
            return
        top_ref = np.asarray(ref[k])[:valid].argmax(-1)
        top_out = np.asarray(out[k])[:valid].argmax(-1)
        counts.agree += int((top_ref == top_out).sum())
        counts.positions += int(top_ref.size)
        if labels is not None and self._labels_usable():
            lab = labels[:valid].reshape(top_ref.shape)
            keep = lab != IGNORE_LABEL
            counts.labelled += int(keep.sum())
            counts.correct_ref += int(((top_ref == lab) & keep).sum())
            counts.correct_out += int(((top_out == lab) & keep).sum())

    def _result(self, sums: list[_Sums], counts: _Counts, n: int) -> dict[str, Any]:
        k = self.class_output
        return {
            "inputs": self.label(n),
            "samples": n,
            "cosine": min((s.cosine() for s in sums), default=1.0),
            "max_rel_error": max((s.rel_error() for s in sums), default=0.0),
            "top1_agreement": counts.agree / counts.positions if counts.positions else None,
            "top1_output": self.g.outputs[k] if k is not None and counts.positions else None,
            "accuracy": ({"before": counts.correct_ref / counts.labelled, "after": counts.correct_out / counts.labelled}
                         if counts.labelled else None),
        }
