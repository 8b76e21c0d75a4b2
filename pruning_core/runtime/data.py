"""Model inputs: data-free generation from the graph itself, and calibration data from .npz files.

Data-free: Gaussian for float inputs -- standard normal after the model's own input normalization
where the graph shows one (``(x - mean) / std`` as Sub / Add / Mul / Div by constants right after
the input) --, valid token ids for integer inputs that index an embedding table (bounded by its
rows), ones for other integer inputs (attention masks); seeded."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from onnx import helper

from pruning_core.errors import DataError
from pruning_core.frontends.npzcheck import BadNpz, read_npz_header
from pruning_core.ir import limits
from pruning_core.ir.graph import Graph


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


def input_affine(g: Graph, name: str, shape: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """(a, b) with the model computing a * x + b from input ``name`` before anything else, when its
    first ops are Sub / Add / Mul / Div by constants (input normalization); None otherwise."""
    a, b = np.ones(1), np.zeros(1)
    t, steps = name, 0
    while True:
        users = g.consumers.get(t, [])
        if len(users) != 1:
            break
        node, i = users[0]
        if node.op_type not in ("Sub", "Add", "Mul", "Div") or len(node.input) != 2:
            break
        c = g.inits.get(node.input[1 - i])
        if c is None or c.dtype.kind != "f":
            break
        c = c.astype(np.float64)
        op = node.op_type
        if op == "Add":
            b = b + c
        elif op == "Sub":
            a, b = (a, b - c) if i == 0 else (-a, c - b)
        elif op == "Mul":
            a, b = a * c, b * c
        elif i == 0:  # Div(x, c)
            a, b = a / c, b / c
        else:
            break
        t, steps = node.output[0], steps + 1
    if not steps:
        return None
    try:
        a, b = np.broadcast_to(a, shape), np.broadcast_to(b, shape)
    except ValueError:
        return None
    if not np.isfinite(a).all() or not np.isfinite(b).all() or (np.abs(a) < 1e-12).any():
        return None
    return a, b


def synthetic_inputs(g: Graph, batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name in g.inputs:
        shape = list(g.shape(name))
        if batch is not None and shape:
            shape[0] = batch
        dtype = helper.tensor_dtype_to_np_dtype(g.dtypes.get(name, 1))
        if dtype.kind == "f":
            z = rng.standard_normal(shape)
            affine = input_affine(g, name, shape)
            if affine is not None:  # N(0, 1) where the model's own normalization puts its inputs
                z = (z - affine[1]) / affine[0]
            feeds[name] = z.astype(dtype)
        elif dtype.kind in "iu":
            bound = _index_bound(g, name)
            feeds[name] = (rng.integers(0, bound, size=shape) if bound else np.ones(shape)).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = np.ones(shape, dtype=bool)
        else:
            raise DataError(f"cannot generate data for input {name!r} of type {dtype}")
    return feeds


def load_npz(path: str | os.PathLike[str], g: Graph,
             what: str = "calibration data") -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read calibration (or evaluation) data: arrays named after the model inputs, optional
    ``labels``. Bad data raises ``DataError``, one sentence naming ``what`` and the file."""
    p = Path(path)
    if p.is_file():  # declared shapes bounded before np.load allocates them
        # No ratio check here: it protects the service (done at upload); a local file is its owner's.
        try:
            read_npz_header(p, max_unpacked=limits.max_unpacked_bytes(), max_ratio=math.inf)
        except BadNpz as e:
            raise DataError(f"the {what} {p.name} is not a readable .npz file ({e})") from None
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {p}") from None
    except Exception as e:
        raise DataError(f"the {what} {p.name} is not a readable .npz file ({e})") from None
    where = f"the {what} {p.name}"
    labels = arrays.pop("labels", None)
    missing = [n for n in g.inputs if n not in arrays]
    extra = sorted(set(arrays) - set(g.inputs))
    if missing or extra:
        raise DataError(f"the arrays {sorted(arrays)} of {where} do not match the model inputs {g.inputs}"
                        + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else ""))
    n = None
    for name in g.inputs:
        a = arrays[name]
        want = g.shape(name)
        dtype = helper.tensor_dtype_to_np_dtype(g.dtypes.get(name, 1))
        if a.ndim != len(want) or tuple(a.shape[1:]) != tuple(want[1:]):
            raise DataError(f"array {name!r} of {where} has shape {a.shape}, "
                            f"the model wants (N, {', '.join(map(str, want[1:]))})")
        if dtype.kind == "f" and a.dtype.kind not in "fiu" or dtype.kind in "iu" and a.dtype.kind not in "iu":
            raise DataError(f"array {name!r} of {where} has dtype {a.dtype}, the model wants {dtype}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise DataError(f"array {name!r} of {where} contains NaN or infinite values")
        if n is not None and a.shape[0] != n:
            raise DataError(f"the arrays of {where} have different sample counts ({n} vs {a.shape[0]} for {name!r})")
        n = a.shape[0]
        arrays[name] = a.astype(dtype, copy=False)
    if n == 0:
        raise DataError(f"{where} holds no samples")
    if labels is not None and (labels.ndim < 1 or labels.shape[0] != n):
        raise DataError(f"the labels of {where} have shape {labels.shape}, expected ({n},)")
    return arrays, labels
