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

__all__ = ["BadNpz", "check_names", "read_npz_header", "sample_count"]


def read_npz_header(
    path: Path, *, max_unpacked: int, max_ratio: float | None = None
) -> dict[str, dict[str, Any]]:
    arrays = _read_arrays(path, max_unpacked=max_unpacked, max_ratio=max_ratio)
    for name in arrays:
        if not NAME_OK.match(name):
            raise BadNpz(f"array name {name!r} is not allowed")
    return arrays


def check_names(
    arrays: dict[str, Any],
    model_summary: dict[str, Any] | None,
    input_shapes: dict[str, list[int]] | None = None,
) -> None:
    """The arrays must be named after the model's inputs (plus optional 'labels'), hold samples of
    the shapes the model takes (``input_shapes`` of the spec override the model's), and as many of
    them in every array. Needs the model's summary (after validation); without it the worker checks."""
    if not model_summary or not model_summary.get("inputs"):
        return
    inputs = {i["name"]: i.get("shape") for i in model_summary["inputs"]}
    missing = sorted(inputs.keys() - arrays.keys())
    unknown = sorted(arrays.keys() - inputs.keys() - {"labels"})
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing arrays for model inputs {missing}")
        if unknown:
            parts.append(f"arrays {unknown} match no model input (allowed extra: 'labels')")
        raise BadNpz("; ".join(parts))
    counts: dict[str, int] = {}
    for name, model_shape in inputs.items():
        shape = list(arrays[name].get("shape") or [])
        want = (input_shapes or {}).get(name) or model_shape
        if (
            want
            and all(isinstance(d, int) for d in want)
            and (len(shape) != len(want) or shape[1:] != list(want[1:]))
        ):
            raise BadNpz(
                f"array {name!r} has shape {tuple(shape)}, but the model input {name!r} takes samples of "
                f"shape {tuple(want[1:])}, i.e. arrays of shape (N, {', '.join(map(str, want[1:]))})"
            )
        if shape:
            counts[name] = int(shape[0])
    labels = (arrays.get("labels") or {}).get("shape")
    if labels:
        counts["labels"] = int(labels[0])
    if len(set(counts.values())) > 1:
        raise BadNpz(f"the arrays hold different numbers of samples: {counts}")
    if counts and not any(counts.values()):
        raise BadNpz("the arrays hold no samples")


def sample_count(arrays: dict[str, Any]) -> int | None:
    """Samples in a dataset (the leading dim of its arrays), from its header."""
    for name, info in arrays.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if name != "labels" and shape:
            return int(shape[0])
    return None
