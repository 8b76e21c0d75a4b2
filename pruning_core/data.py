"""Model inputs: data-free generation from the graph itself, and calibration data from .npz files.

Data-free: Gaussian for float inputs, valid token ids for integer inputs that index an embedding
table (bounded by its rows), ones for other integer inputs (attention masks); seeded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from onnx import helper

from pruning_core.errors import DataError
from pruning_core.graph import Graph


def _index_bound(g: Graph, name: str) -> int | None:
    """Rows of the smallest table this input indexes (through Cast / Reshape / Unsqueeze / ...)."""
    bound = None
    frontier, seen = [name], set()
    while frontier:
        t = frontier.pop()
        if t in seen:
            continue
        seen.add(t)
        for node, i in g.consumers.get(t, []):
            if node.op_type == "Gather" and i == 1 and node.input[0] in g.inits:
                rows = g.inits[node.input[0]].shape[0]
                bound = rows if bound is None else min(bound, rows)
            elif node.op_type in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"):
                frontier.extend(o for o in node.output if o)
    return bound


def synthetic_inputs(g: Graph, batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name in g.inputs:
        shape = list(g.shape(name))
        if batch is not None and shape:
            shape[0] = batch
        dtype = helper.tensor_dtype_to_np_dtype(g.dtypes.get(name, 1))
        if dtype.kind == "f":
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            bound = _index_bound(g, name)
            feeds[name] = (rng.integers(0, bound, size=shape) if bound else np.ones(shape)).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = np.ones(shape, dtype=bool)
        else:
            raise DataError(f"cannot generate data for input {name!r} of type {dtype}")
    return feeds


def load_npz(path: str | os.PathLike[str], g: Graph) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read calibration data: arrays named after the model inputs, optional ``labels``."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"data file not found: {p}") from None
    except Exception as e:
        raise DataError(f"{p.name} is not a readable .npz file ({type(e).__name__}: {e})") from None
    labels = arrays.pop("labels", None)
    missing = [n for n in g.inputs if n not in arrays]
    extra = sorted(set(arrays) - set(g.inputs))
    if missing or extra:
        raise DataError(f"data arrays {sorted(arrays)} do not match the model inputs {g.inputs}"
                        + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else ""))
    n = None
    for name in g.inputs:
        a = arrays[name]
        want = g.shape(name)
        dtype = helper.tensor_dtype_to_np_dtype(g.dtypes.get(name, 1))
        if a.ndim != len(want) or tuple(a.shape[1:]) != tuple(want[1:]):
            raise DataError(f"array {name!r} has shape {a.shape}, the model wants (N, {', '.join(map(str, want[1:]))})")
        if dtype.kind == "f" and a.dtype.kind not in "fiu" or dtype.kind in "iu" and a.dtype.kind not in "iu":
            raise DataError(f"array {name!r} has dtype {a.dtype}, the model wants {dtype}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise DataError(f"array {name!r} contains NaN or infinite values")
        if n is not None and a.shape[0] != n:
            raise DataError(f"arrays have different sample counts ({n} vs {a.shape[0]} for {name!r})")
        n = a.shape[0]
        arrays[name] = a.astype(dtype, copy=False)
    if labels is not None and (labels.ndim < 1 or labels.shape[0] != n):
        raise DataError(f"labels has shape {labels.shape}, expected ({n},)")
    return arrays, labels
