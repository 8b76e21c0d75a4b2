"""Matrix products: MatMul, Gemm, Einsum; Trilu."""

from __future__ import annotations

import torch

from pruning_core.twin.ops.common import given
from pruning_core.twin.ops.table import OPS, Attrs, Tensor


@OPS.register("MatMul")
def _matmul(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return torch.matmul(ins[0], ins[1])  # type: ignore[arg-type]


@OPS.register("Gemm")
def _gemm(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, w, c = ins[0], ins[1], given(ins, 2)
    assert x is not None and w is not None
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    y = x @ w
    if alpha != 1.0:
        y = y * alpha
    if c is not None and beta != 0.0:
        y = y + (c if beta == 1.0 else beta * c)
    return y


@OPS.register("Einsum")
def _einsum(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    return torch.einsum(a["equation"].replace(" ", ""), *[t for t in ins if t is not None])


@OPS.register("Trilu")
def _trilu(a: Attrs, ins: list[Tensor | None]) -> Tensor:
    x, k = ins[0], given(ins, 1)
    assert x is not None
    diag = int(k.reshape(-1)[0]) if k is not None else 0
    return torch.triu(x, diag) if a.get("upper", 1) else torch.tril(x, diag)
