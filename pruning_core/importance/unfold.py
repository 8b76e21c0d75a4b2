"""A consumer's input as the rows OBSPA's Hessians are built from: im2col patches of a 1-D / 2-D Conv,
or positions x features of a dense layer; all of them, or a bounded, stratified sample of them.

Rows are numbered item-major (``item * per_item + position``), so a sample drawn by ``sample`` is
spread evenly over the batch items and, within an item, over its positions. Sampled rows are
gathered BEFORE unfolding: only the chosen patches are ever materialized, never the im2col matrix
of a whole activation (a 3x3 conv over 64 channels at 320x320 would be 235 MB per sample).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from onnx import NodeProto

from pruning_core.ir.graph import attr


@dataclass(frozen=True)
class Rows:
    """``per_item(shape)``: rows one batch item of an activation of that shape gives (its
    positions; the whole activation is one item when the batch axis is the feature axis);
    ``take(x, idx)``: rows ``idx`` (None: all) of activation ``x`` as ``[n, K]``."""

    per_item: Callable[[tuple[int, ...]], int]
    take: Callable[[np.ndarray, np.ndarray | None], np.ndarray]
    items: Callable[[tuple[int, ...]], int]


def sample(n_items: int, per_item: int, cap: int, rng: np.random.Generator) -> np.ndarray | None:
    """At most ``cap`` row indices of ``n_items * per_item`` rows, None when all fit: the cap
    is spread evenly over the items, and each item's share is stratified over its positions (one
    uniform draw in each of ``r`` equal strata: even coverage, no aliasing with the image width)."""
    total = n_items * per_item
    if total <= cap:
        return None
    counts = np.full(n_items, cap // n_items) + (np.arange(n_items) < cap % n_items)
    item = np.repeat(np.arange(n_items), counts)
    r = np.repeat(counts, counts)
    j = np.arange(len(item)) - np.repeat(np.cumsum(counts) - counts, counts)  # rank within item
    pos = np.floor((j + rng.random(len(item))) * per_item / r).astype(np.int64)
    return item * per_item + np.minimum(pos, per_item - 1)


def conv_pads(node: NodeProto, spatial: tuple[int, ...], kernel: tuple[int, ...],
              strides: list[int], dil: list[int]) -> list[tuple[int, int]]:
    nd = len(spatial)
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i in range(nd):
            o = -(-spatial[i] // strides[i])
            total = max(0, (o - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - spatial[i])
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            out.append((lo, total - lo))
        return out
    if auto == "VALID":
        return [(0, 0)] * nd
    pads = list(attr(node, "pads", [0] * (2 * nd)))
    return [(pads[i], pads[i + nd]) for i in range(nd)]


def conv_unfold(node: NodeProto, x_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> tuple[Rows, tuple] | None:
    """(patch rows [n, C*k] of a 1-D / 2-D Conv input, hashable signature of the unfolding)."""
    nd = len(x_shape) - 2
    if nd not in (1, 2):
        return None
    kernel = tuple(w_shape[2:])
    strides = list(attr(node, "strides", [1] * nd))
    dil = list(attr(node, "dilations", [1] * nd))
    pads = conv_pads(node, tuple(x_shape[2:]), kernel, strides, dil)
    if nd == 1:
        kernel, strides, dil, pads = (1, *kernel), [1, *strides], [1, *dil], [(0, 0), *pads]
    span = tuple((k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True))

    def grid(shape: tuple[int, ...]) -> tuple[int, int]:
        sp = (1, *shape[2:]) if nd == 1 else tuple(shape[2:])
        return tuple((sp[i] + sum(pads[i]) - span[i]) // strides[i] + 1 for i in range(2))  # type: ignore[return-value]

    def per_item(shape: tuple[int, ...]) -> int:
        ho, wo = grid(shape)
        return ho * wo

    def take(x: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
        if nd == 1:
            x = x[:, :, None, :]
        xp = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
        # [B, C, H', W', span_h, span_w] view, then stride and dilation by slicing: no copy
        win = sliding_window_view(xp, span, axis=(2, 3))
        win = win[:, :, ::strides[0], ::strides[1], ::dil[0], ::dil[1]]
        k = x.shape[1] * kernel[0] * kernel[1]
        if idx is None:
            return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, k)
        ho, wo = win.shape[2], win.shape[3]
        b, r = np.divmod(idx, ho * wo)
        oy, ox = np.divmod(r, wo)
        return win[b, :, oy, ox].reshape(len(idx), k)  # only the sampled patches: [n, C, kh, kw]

    return Rows(per_item, take, lambda shape: shape[0]), ("conv", tuple(kernel), tuple(strides), tuple(dil),
                                                         tuple(pads))


def dense_unfold(axis: int) -> Rows:
    """Rows of a dense layer's input: every position of the other axes, features along ``axis``."""

    def moved_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(s for i, s in enumerate(shape) if i != axis % len(shape))

    def items(shape: tuple[int, ...]) -> int:
        return shape[0] if axis % len(shape) != 0 else 1

    def per_item(shape: tuple[int, ...]) -> int:
        return int(np.prod(moved_shape(shape), dtype=np.int64)) // items(shape)

    def take(x: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
        m = np.moveaxis(x, axis, -1)
        if idx is None:
            return m.reshape(-1, m.shape[-1])
        return m[np.unravel_index(idx, m.shape[:-1])]  # no copy of the whole activation

    return Rows(per_item, take, items)
