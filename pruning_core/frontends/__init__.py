"""Frontends: whatever the user uploads -> the ONNX file the core prunes, and back.

``open_model(path, workdir)`` returns a ``Source``: the ONNX path to prune plus a hook that writes
frontend-specific artifacts (``pruned.pt2``, ``plan.json`` for PyTorch) after pruning. ONNX files
pass through; ``.zip`` archives (model + external data) are extracted by ``frontends.zipsafe``; PyTorch
programs (``.pt2``) are converted by ``frontends.pytorch``."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pruning_core.errors import ModelLoadError

PYTORCH_SUFFIXES = (".pt2", ".pt", ".pth", ".ts")

# (analysis, removed[cid], pruned ModelProto, out_dir, spec) -> {artifact name: path}
ArtifactHook = Callable[[Any, Any, Any, Path, Any], dict[str, Path]]


@dataclass
class Source:
    path: Path                    # the ONNX file the core prunes
    kind: str                     # "onnx" | "pytorch"
    original: Path                # what the user gave
    artifacts: ArtifactHook | None = None


def open_model(path: str | os.PathLike[str], workdir: Path) -> Source:
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p}")
    if p.suffix.lower() in PYTORCH_SUFFIXES:
        from pruning_core.frontends import pytorch

        return pytorch.open_pt2(p, workdir)
    if p.suffix.lower() == ".zip" or zipfile.is_zipfile(p) and p.suffix.lower() != ".onnx":
        return Source(extract_zip(p, workdir / "model"), "onnx", p)
    return Source(p, "onnx", p)


def extract_zip(path: Path, dest: Path, *, max_unpacked: int | None = None,
                max_ratio: float | None = None) -> Path:
    """Extract an uploaded archive with the service's limits (``frontends.zipsafe``: paths, links,
    member count, declared and real sizes, compression ratio); returns the one .onnx inside it."""
    from pruning_core.frontends.zipsafe import UnsafeZip, safe_extract

    try:
        files = safe_extract(path, dest, max_unpacked=max_unpacked, max_ratio=max_ratio)
    except UnsafeZip as e:
        raise ModelLoadError(str(e)) from None
    models = sorted(p for p in files if p.suffix == ".onnx")
    if len(models) != 1:
        raise ModelLoadError(f"{path.name} must hold exactly one .onnx file, found {len(models)}")
    return models[0]
