"""Differentiable cost model: MACs (and params, channels) as a function of soft per-channel keeps.

AutoBot's FLOPs loss needs the model's MAC count as a smooth function of its channel gates. We do
not write a second, approximate cost model: the one MAC model is ``metrics.node_macs`` fed with
``Analysis.shape_after`` (a tensor's size along its channel axis = its positions no channel owns +
its positions whose channel is kept). Here the same two functions are replayed with a *soft* keep
``k[cid]`` in [0, 1]: an owned axis has size ``#unowned + sum_p k[owner[p]]``. Every MAC term is a
product of such sizes and constant dims (Conv: out channels x in channels / group x spatial), so

    F(k) = sum_terms const_t * prod_j size_{d(t, j)}(k)

which is a polynomial in the keeps, exact at 0/1 keeps: ``F(1 - removed) == Analysis.macs(removed)``
(tests check it on every test net, and ``SoftCost`` re-checks it when built, so a change to
``metrics.node_macs`` that is not mirrored here fails loudly instead of skewing the target).

The node rules are replayed symbolically once (``_Mono``: constant x product of soft dims), then
evaluated every step as one gather + segment sum + product in float64 (integers stay exact far
beyond any real MAC count).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from onnx import NodeProto

from pruning_core.analysis.groups import Analysis, Group
from pruning_core.ir.graph import attr

Tensor = torch.Tensor


@dataclass(frozen=True)
class _Mono:
    """const * prod(soft dims): the symbolic value of one dimension or a product of dimensions."""

    const: int
    dims: tuple[int, ...] = ()

    def __mul__(self, other: _Mono) -> _Mono:
        return _Mono(self.const * other.const, self.dims + other.dims)


_ONE = _Mono(1)
_ZERO = _Mono(0)


def _prod(xs: list[_Mono] | tuple[_Mono, ...]) -> _Mono:
    out = _ONE
    for x in xs:
        out = out * x
    return out


ShapeSym = Callable[[str], list[_Mono]]


def _node_macs_sym(node: NodeProto, shape: ShapeSym) -> _Mono:
    """``metrics.node_macs`` line for line, over symbolic dims (keep the two in step)."""
    op = node.op_type
    try:
        if op == "Conv":
            return _prod(shape(node.output[0])) * _prod(shape(node.input[1])[1:])
        if op == "ConvTranspose":
            return _prod(shape(node.input[0])) * _prod(shape(node.input[1])[1:])
        if op == "Gemm":
            a = shape(node.input[0])
            k = a[0] if attr(node, "transA", 0) else a[1]
            return _prod(shape(node.output[0])) * k
        if op == "MatMul":
            a = shape(node.input[0])
            return _prod(shape(node.output[0])) * a[-1]
    except KeyError:
        return _ZERO
    return _ZERO


class SoftCost:
    """``cost(keep) -> Tensor`` (float64 scalar): MACs, params or kept channels of the model when
    channel ``cid`` is kept to the degree ``keep[cid]``. ``kind`` as in the spec target."""

    def __init__(self, an: Analysis, kind: str = "flops", groups: list[Group] | None = None) -> None:
        self.an, self.kind = an, kind
        self.n = an.n_channels
        self._dim_idx: list[np.ndarray] = []
        self._dim_key: dict[tuple[str, int], int] = {}
        if kind == "channels":
            # selection measures channels over the candidate groups only
            cids = np.concatenate([g.channels for g in (groups or an.groups)] or [np.zeros(0, np.int64)])
            terms = [_Mono(1, (self._dim(("__channels__", int(c)), np.array([c])),)) for c in cids]
        elif kind == "flops":
            terms = [_node_macs_sym(n, self._shape) for n in an.graph.nodes]
        elif kind == "params":
            from pruning_core.runtime.metrics import is_weight

            g = an.graph
            terms = [_prod(self._shape(n)) for n, a in g.inits.items() if is_weight(g, n, a)]
        else:
            raise ValueError(f"unknown cost kind {kind!r}")
        self._compile([t for t in terms if t.const != 0])
        full = float(self(torch.ones(self.n, dtype=torch.float64)))
        self.full = full
        if kind != "channels":
            self._self_check()

    # ------------------------------------------------------------------ symbolic shapes

    def _dim(self, key: tuple, owner: np.ndarray) -> int:
        """Id of the soft dim of ``key`` whose positions are owned by ``owner`` (cid or -1)."""
        if key not in self._dim_key:
            self._dim_key[key] = len(self._dim_idx)
            # -1 (no channel owns the position: always there) -> the constant-1 slot at index n
            self._dim_idx.append(np.where(owner >= 0, owner, self.n).astype(np.int64))
        return self._dim_key[key]

    def _shape(self, name: str) -> list[_Mono]:
        """``Analysis.shape_after`` with soft sizes on owned axes."""
        an = self.an
        shape = [_Mono(int(d)) for d in an.graph.shape(name)]
        if name in an.act_owner:
            ax, owner = an.act_owner[name]
            shape[ax] = _Mono(1, (self._dim((name, ax), owner),))
        elif name in an.param_owner:
            for ax, owner in an.param_owner[name]:
                shape[ax] = _Mono(1, (self._dim((name, ax), owner),))
        elif name in an.views:
            init, amap = an.views[name]
            base = self._shape(init)
            for ax, src in enumerate(amap):
                if src is not None:
                    shape[ax] = base[src]
        return shape

    def _compile(self, terms: list[_Mono]) -> None:
        n_dims = len(self._dim_idx)
        lens = [len(i) for i in self._dim_idx]
        self._gather = torch.as_tensor(np.concatenate(self._dim_idx) if n_dims else np.zeros(0, np.int64))
        self._segment = torch.as_tensor(np.repeat(np.arange(n_dims), lens).astype(np.int64))
        self._n_dims = n_dims
        width = max((len(t.dims) for t in terms), default=0)
        # pad with the constant-1 dim appended after the soft dims
        d = np.full((len(terms), max(width, 1)), n_dims, dtype=np.int64)
        for i, t in enumerate(terms):
            d[i, : len(t.dims)] = t.dims
        self._terms = torch.as_tensor(d)
        self._const = torch.as_tensor([float(t.const) for t in terms], dtype=torch.float64)

    # ------------------------------------------------------------------ evaluation

    def __call__(self, keep: Tensor) -> Tensor:
        keep = keep.to(torch.float64)
        ext = torch.cat([keep, keep.new_ones(1)])
        sizes = torch.zeros(self._n_dims + 1, dtype=torch.float64, device=keep.device)
        sizes = sizes.index_add(0, self._segment.to(keep.device), ext[self._gather.to(keep.device)])
        sizes[self._n_dims] = 1.0
        if not len(self._const):
            return keep.new_zeros((), dtype=torch.float64)
        return (self._const.to(keep.device) * sizes[self._terms.to(keep.device)].prod(dim=1)).sum()

    def exact(self, removed: np.ndarray | None = None) -> int:
        """The real counter (``Analysis.macs`` / ``params``) for a 0/1 removal."""
        return self.an.macs(removed) if self.kind == "flops" else self.an.params(removed)

    def _self_check(self) -> None:
        rng = np.random.default_rng(0)
        removed = rng.random(self.n) < 0.3
        for r in (np.zeros(self.n, dtype=bool), removed):
            soft = float(self(torch.as_tensor(1.0 - r.astype(np.float64))))
            real = self.exact(r)
            if abs(soft - real) > 1e-6 * max(1.0, abs(real)):
                raise AssertionError(f"soft {self.kind} model ({soft}) disagrees with the real counter ({real}): "
                                     "pruning_core.twin.flops must mirror metrics.node_macs / Analysis.shape_after")
