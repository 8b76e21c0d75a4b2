"""Quantized weights of QDQ graphs: a DequantizeLinear of an initializer makes the float weight
``(q - zero_point) * scale`` (per tensor, or per channel along ``axis``). Criteria score, and
OBSPA refits, in those float values; a refit goes back to the integer type with the same scale
and zero point (rounded and clipped, as the quantizer would), so the result stays quantized."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pruning_core.ir.graph import Graph, attr


@dataclass(frozen=True)
class QParams:
    scale: np.ndarray
    zero: np.ndarray
    axis: int

    def shaped(self, arr: np.ndarray, ndim: int) -> np.ndarray:
        """``arr`` (scalar or per channel) broadcastable against a weight of rank ``ndim``."""
        if arr.size <= 1:
            return arr.reshape(())
        shape = [1] * ndim
        shape[self.axis % ndim] = arr.size
        return arr.reshape(shape)


def weight_qparams(g: Graph) -> dict[str, QParams]:
    """Initializer -> the scale and zero point its DequantizeLinear applies (weights only; a
    computed scale, blocked quantization or two different dequantizations: not listed)."""
    if g.qparams is None:
        found: dict[str, QParams | None] = {}
        for node in g.model.graph.node:
            if node.op_type != "DequantizeLinear" or node.input[0] not in g.inits:
                continue
            scale = g.inits.get(node.input[1]) if len(node.input) > 1 else None
            zero_name = node.input[2] if len(node.input) > 2 else ""
            zero = g.inits.get(zero_name) if zero_name else np.zeros((), g.inits[node.input[0]].dtype)
            ok = scale is not None and zero is not None and not attr(node, "block_size", 0)
            q = QParams(scale, zero, int(attr(node, "axis", 1))) if ok else None  # type: ignore[arg-type]
            name = node.input[0]
            found[name] = q if name not in found or _same(found[name], q) else None
        g.qparams = {k: v for k, v in found.items() if v is not None}
    return g.qparams


def _same(a: QParams | None, b: QParams | None) -> bool:
    return a is not None and b is not None and a.axis == b.axis and np.array_equal(a.scale, b.scale) \
        and np.array_equal(a.zero, b.zero)


def float_value(g: Graph, name: str) -> np.ndarray:
    """The values the model computes with: dequantized for a QDQ weight, else the initializer."""
    arr = g.inits[name]
    q = weight_qparams(g).get(name)
    if q is None:
        return arr
    return (arr.astype(np.float64) - q.shaped(q.zero.astype(np.float64), arr.ndim)) \
        * q.shaped(q.scale.astype(np.float64), arr.ndim)


def to_stored(g: Graph, name: str, values: np.ndarray, keep: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """Float ``values`` of initializer ``name`` in its stored type: requantized (round, clip to
    the integer range) for a QDQ weight. ``keep``: axis -> kept positions, when ``values`` is the
    narrowed weight (the per-channel scale is narrowed alike)."""
    dtype = g.inits[name].dtype
    q = weight_qparams(g).get(name)
    if q is None or not np.issubdtype(dtype, np.integer):
        return np.ascontiguousarray(values.astype(dtype))
    scale, zero = q.scale.astype(np.float64), q.zero.astype(np.float64)
    kept = (keep or {}).get(q.axis % values.ndim)
    if kept is not None and scale.size > 1:
        scale, zero = scale[kept], (zero[kept] if zero.size > 1 else zero)
    raw = np.rint(values / q.shaped(scale, values.ndim)) + q.shaped(zero, values.ndim)
    info = np.iinfo(dtype)
    return np.ascontiguousarray(np.clip(raw, info.min, info.max).astype(dtype))
