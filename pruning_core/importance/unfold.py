"""A consumer's input as the rows OBSPA's Hessians are built from: im2col patches of a 1-D / 2-D Conv
(zero-copy sliding windows, then one reshape), or positions x features of a dense layer."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from onnx import NodeProto

from pruning_core.ir.graph import attr


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


def conv_unfold(node: NodeProto, x_shape: tuple[int, ...],
                 w_shape: tuple[int, ...]) -> tuple[Callable, tuple] | None:
    """(activation -> patches [n, C*k], hashable signature of the unfolding) for 1-D / 2-D Conv."""
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

    def unfold(x: np.ndarray) -> np.ndarray:
        if nd == 1:
            x = x[:, :, None, :]
        xp = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
        # [B, C, H', W', span_h, span_w] view, then stride and dilation by slicing: no copy
        win = sliding_window_view(xp, span, axis=(2, 3))
        win = win[:, :, ::strides[0], ::strides[1], ::dil[0], ::dil[1]]
        return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kernel[0] * kernel[1])

    return unfold, ("conv", tuple(kernel), tuple(strides), tuple(dil), tuple(pads))


def dense_unfold(axis: int) -> Callable[[np.ndarray], np.ndarray]:
    def unfold(x: np.ndarray) -> np.ndarray:
        m = np.moveaxis(x, axis, -1)
        return m.reshape(-1, m.shape[-1])

    return unfold
