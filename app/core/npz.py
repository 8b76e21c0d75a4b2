"""Read the array names, shapes and dtypes of an .npz from its headers, without loading data and
without pickle. The header reader (declared sizes bounded before anything is allocated) is the
library's, shared with ``pruning_core.runtime.data.load_npz``; the API adds its own name rule."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pruning_core.frontends.npzcheck import BadNpz
from pruning_core.frontends.npzcheck import read_npz_header as _read_arrays

NAME_OK = re.compile(r"^[A-Za-z0-9_.:/\-]{1,200}$")

__all__ = ["BadNpz", "check_names", "read_npz_header"]


def read_npz_header(
    path: Path, *, max_unpacked: int, max_ratio: float | None = None
) -> dict[str, dict[str, Any]]:
    arrays = _read_arrays(path, max_unpacked=max_unpacked, max_ratio=max_ratio)
    for name in arrays:
        if not NAME_OK.match(name):
            raise BadNpz(f"array name {name!r} is not allowed")
    return arrays


def check_names(arrays: dict[str, Any], model_summary: dict[str, Any] | None) -> None:
    """The arrays must be named after the model's inputs (plus optional 'labels')."""
    if not model_summary or not model_summary.get("inputs"):
        return
    inputs = {i["name"] for i in model_summary["inputs"]}
    missing = sorted(inputs - arrays.keys())
    unknown = sorted(arrays.keys() - inputs - {"labels"})
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing arrays for model inputs {missing}")
        if unknown:
            parts.append(f"arrays {unknown} match no model input (allowed extra: 'labels')")
        raise BadNpz("; ".join(parts))
