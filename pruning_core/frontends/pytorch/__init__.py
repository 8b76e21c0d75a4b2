"""PyTorch frontend: ``.pt2`` programs in; ``pruned.pt2`` and ``plan.json`` out.

- ``archive``: reads an uploaded ``torch.export.save`` archive without running anything it holds;
- ``load`` (in): the program, its original state (:class:`Originals`), its ONNX conversion
  (``to_onnx``) and the map from the analyzed graph's initializers back to the original tensors
  (``map_initializers``);
- ``export`` (out): ``plan.json`` and ``pruned.pt2`` (:class:`PrunedProgram`, ``export_program``),
  written by the :class:`ArtifactWriter` hook after pruning and checked against ``pruned.onnx``.

Uploads are programs from strangers: ``archive`` reads them without running their pickles or
code. TorchScript archives (loading one runs the archive's own code) and pickled checkpoints
(``torch.save``: no graph, and unpickling runs arbitrary code) are refused with a sentence.
"""

from __future__ import annotations

from pathlib import Path

from pruning_core.frontends import Source
from pruning_core.frontends.pytorch.export import (
    TOLERANCE,
    ArtifactWriter,
    PrunedProgram,
    PT2ExportError,
    export_program,
)
from pruning_core.frontends.pytorch.load import OPSET, Originals, load_program, map_initializers, to_onnx

__all__ = [
    "OPSET",
    "TOLERANCE",
    "ArtifactWriter",
    "Originals",
    "PT2ExportError",
    "PrunedProgram",
    "export_program",
    "load_program",
    "map_initializers",
    "open_pt2",
    "to_onnx",
]


def open_pt2(path: Path, workdir: Path) -> Source:
    """Load a PyTorch program, convert it to ONNX in ``workdir``; the Source's hook writes the
    PyTorch artifacts after pruning."""
    path = Path(path)
    ep = load_program(path)
    originals = Originals.of(ep, path.name)
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = workdir / f"{path.stem}.onnx"
    to_onnx(ep, onnx_path)
    return Source(onnx_path, "pytorch", path, ArtifactWriter(originals))
