"""Small helpers shared by op rule modules."""

from __future__ import annotations

import numpy as np


def pad_rank(arr: np.ndarray, rank: int) -> np.ndarray:
    """Left-pad with size-1 dims (numpy broadcasting alignment)."""
    return arr.reshape((1,) * (rank - arr.ndim) + arr.shape) if arr.ndim < rank else arr


def along_axis_shape(rank: int, axis: int, n: int) -> tuple[int, ...]:
    return tuple(n if ax == axis else 1 for ax in range(rank))


def as_axis(vec: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A label vector laid along ``axis`` of a rank-``rank`` compact array."""
    return np.asarray(vec, dtype=np.int64).reshape(along_axis_shape(rank, axis % rank, len(vec)))
