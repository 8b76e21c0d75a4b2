"""OBSPA: Optimal Brain Surgeon lifted to channel groups, with closed-form weight compensation.

For every layer that consumes channels (``Analysis.consumer_inputs``) with a weight, the inputs X
it sees in the ORIGINAL model (onnxruntime, calibration data or data-free inputs) give the layer
Hessian of the reconstruction error H = X^T X / n (Conv: unfolded patches, one column block per
input channel). Removing the columns P of a channel costs, after the best refit of the other
columns,

    dE = 1/2 tr(W_P ([H^-1]_PP)^-1 W_P^T)

and a channel's score is dE summed over every consumer. After selection the kept columns are
refit in closed form, dW = -W_P ([H^-1]_PP)^-1 [H^-1]_P: (damping 1 % of mean diag H): the
least-squares fit of the removed columns' contribution from the kept ones. A layer bias, when
there is one, is an extra always-kept column of ones, so it absorbs the removed channels' mean.

Activation x activation contractions (attention Q K^T with head dims pruned) have no weight to
refit: their cost is the exact output change 1/2 ||A_P B_P||^2 of removing the channel.

Memory stays bounded: H is never wider than ``MAX_COLS`` (wider layers are split into
channel-aligned column blocks, i.e. block-diagonal H), and consumers are processed in chunks whose
H fit in ``H_BUDGET`` bytes, one onnxruntime pass over the calibration data per chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import ModelProto, NodeProto, numpy_helper

from pruning_core.analysis.groups import Analysis, Group
from pruning_core.importance.magnitude import _place_norms
from pruning_core.importance.registry import ScoreContext, register
from pruning_core.importance.unfold import conv_unfold, dense_unfold
from pruning_core.ir.graph import attr
from pruning_core.runtime import calibration

MAX_COLS = 4096            # widest H built (4096^2 float64 = 128 MiB)
H_BUDGET = 512 << 20       # bytes of H held at once; more consumers -> more passes over the data
DAMP = 0.01                # damping: 1 % of the mean diagonal of H
CHANNEL_CHUNK = 256        # channels solved at once when scoring
POOL = 32                  # samples whose activations are processed together
ROW_BLOCK = 1 << 16        # unfolded rows (about) at once: bounded memory, a progress report between


@dataclass
class Block:
    """One least-squares problem: output rows ``rows`` of the weight matrix against the unfolded
    input columns ``xcols`` (weight matrix columns ``wcols``); ``owner`` is each column's cid."""

    key: tuple                      # shared H key: (tensor, unfold signature, columns, bias)
    rows: np.ndarray
    xcols: np.ndarray
    wcols: np.ndarray
    owner: np.ndarray


@dataclass
class Consumer:
    node: str
    tensor: str                                # the captured input activation
    init: str                                  # weight initializer
    get: Callable[[np.ndarray], np.ndarray]    # init array -> weight matrix [O, K]
    put: Callable[[np.ndarray], np.ndarray]    # weight matrix [O, K] -> init array
    unfold: Callable[[np.ndarray], np.ndarray]  # activation -> X [n, K]
    blocks: list[Block]
    bias: str | None = None
    splittable: bool = True                    # the channel axis is not dim 0: samples may be cut


@dataclass
class Product:
    """An activation x activation MatMul contracting channels (no weight to refit)."""

    node: str
    a: str
    b: str
    owner: np.ndarray                          # cid per contracted position


@dataclass
class ConsumerPlan:
    """Every consumer of channels (``plan``): weight least-squares blocks and weightless products
    (not the plan.json of ``pruning_core.plan``)."""

    consumers: list[Consumer] = field(default_factory=list)
    products: list[Product] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ planning


def _param(an: Analysis, name: str) -> tuple[str, Callable, Callable] | None:
    """(initializer, init -> view, view -> init) for an initializer or a permuted view of one."""
    g = an.graph
    if name in g.inits:
        return name, (lambda a: a), (lambda v: v)
    if name not in an.views:
        return None
    init, amap = an.views[name]
    perm = [a for a in amap if a is not None]
    if sorted(perm) != list(range(g.inits[init].ndim)):
        return None
    vshape = g.shape(name)
    inv = np.argsort(perm)

    def to_view(a: np.ndarray) -> np.ndarray:
        return np.transpose(a, perm).reshape(vshape)

    def to_init(v: np.ndarray) -> np.ndarray:
        return np.transpose(v.reshape([g.inits[init].shape[p] for p in perm]), inv)

    return init, to_view, to_init


def _bias_of_matmul(an: Analysis, node: NodeProto, n_out: int) -> str | None:
    """The [N] initializer of the Add that follows a Linear's MatMul (exporters split Linear)."""
    users = an.graph.consumers.get(node.output[0], [])
    if len(users) != 1 or users[0][0].op_type != "Add":
        return None
    add = users[0][0]
    other = add.input[1 - users[0][1]]
    b = an.graph.inits.get(other)
    return other if b is not None and b.ndim == 1 and b.shape[0] == n_out else None


def _split(owner: np.ndarray, max_cols: int) -> list[np.ndarray]:
    """Channel-aligned column blocks of at most ``max_cols`` columns (a channel never splits)."""
    if len(owner) <= max_cols:
        return [np.arange(len(owner))]
    units: list[np.ndarray] = []
    seen: dict[int, int] = {}
    free: list[int] = []
    for c, o in enumerate(owner):
        if o < 0:
            free.append(c)
        elif int(o) in seen:
            units[seen[int(o)]] = np.append(units[seen[int(o)]], c)
        else:
            seen[int(o)] = len(units)
            units.append(np.array([c]))
    units += [np.array(free[i:i + max_cols]) for i in range(0, len(free), max_cols)]
    out: list[np.ndarray] = []
    cur: list[np.ndarray] = []
    size = 0
    for u in units:
        if cur and size + len(u) > max_cols:
            out.append(np.sort(np.concatenate(cur)))
            cur, size = [], 0
        cur.append(u)
        size += len(u)
    if cur:
        out.append(np.sort(np.concatenate(cur)))
    return out


def _owner_along(an: Analysis, tensor: str, axis: int) -> np.ndarray | None:
    if tensor not in an.act_owner:
        return None
    ax, owner = an.act_owner[tensor]
    rank = len(an.graph.shape(tensor))
    return owner if ax % rank == axis % rank else None


def plan(an: Analysis, max_cols: int | None = None) -> ConsumerPlan:
    """Every consumer of channels, as weight least-squares blocks or weightless products."""
    g = an.graph
    max_cols = max_cols or MAX_COLS
    nodes = {n.name: n for n in g.nodes}
    out = ConsumerPlan()
    for node_name, idx, tensor in an.consumer_inputs:
        node = nodes[node_name]
        op = node.op_type
        if op == "MatMul" and not any(n in g.inits or n in an.views for n in node.input[:2]):
            if idx == 0:
                own = _owner_along(an, node.input[0], -1)
                if own is not None:
                    out.products.append(Product(node_name, node.input[0], node.input[1], own))
            continue
        c = _consumer(an, node, idx, tensor, max_cols)
        if c is None:
            out.skipped.append(node_name)
        else:
            out.consumers.append(c)
    return out


def _consumer(an: Analysis, node: NodeProto, idx: int, tensor: str, max_cols: int) -> Consumer | None:
    g = an.graph
    op = node.op_type
    x_shape = g.shape(tensor)
    bias = None
    if op == "Conv" and idx == 0 and node.input[1] in g.inits:
        init = node.input[1]
        w_shape = g.inits[init].shape
        own = _owner_along(an, tensor, 1)
        uf = conv_unfold(node, x_shape, w_shape)
        if own is None or uf is None:
            return None
        unfold, sig = uf
        k = int(np.prod(w_shape[2:]))
        groups = int(attr(node, "group", 1))
        cg, og = w_shape[1], w_shape[0] // groups

        def get(a: np.ndarray) -> np.ndarray:
            return a.reshape(a.shape[0], -1)

        def put(m: np.ndarray, shape: tuple[int, ...] = tuple(w_shape)) -> np.ndarray:
            return m.reshape(shape)

        col_owner = np.repeat(own, k)
        blocks = []
        for gi in range(groups):
            xc = np.arange(gi * cg * k, (gi + 1) * cg * k)
            blocks += _blocks(tensor, sig, np.arange(gi * og, (gi + 1) * og), xc,
                              np.arange(cg * k), col_owner[xc], max_cols)
        if len(node.input) > 2 and node.input[2] in g.inits:
            bias = node.input[2]
        return Consumer(node.name, tensor, init, get, put, unfold, blocks, bias)
    if op == "Gemm" and idx == 0:
        p = _param(an, node.input[1])
        if p is None:
            return None
        init, to_view, to_init = p
        axis = 0 if attr(node, "transA", 0) else 1
        tb = int(attr(node, "transB", 0))
        own = _owner_along(an, tensor, axis)
        if own is None:
            return None

        def get(a: np.ndarray) -> np.ndarray:
            v = to_view(a)
            return v if tb else v.T

        def put(m: np.ndarray) -> np.ndarray:
            return to_init(m if tb else m.T)

        n_out = g.shape(node.input[1])[0 if tb else 1]
        if len(node.input) > 2 and node.input[2] in g.inits and g.inits[node.input[2]].size == n_out \
                and g.inits[node.input[2]].ndim == 1:
            bias = node.input[2]
        key = ("dense", axis)
    elif op == "MatMul":
        p = _param(an, node.input[1 - idx])
        if p is None or len(g.shape(node.input[1 - idx])) != 2:
            return None
        init, to_view, to_init = p
        axis = len(x_shape) - 1 if idx == 0 else len(x_shape) - 2
        own = _owner_along(an, tensor, axis)
        if own is None:
            return None
        if idx == 0:  # X @ W, W [K, N]
            def get(a: np.ndarray) -> np.ndarray:
                return to_view(a).T

            def put(m: np.ndarray) -> np.ndarray:
                return to_init(m.T)

            bias = _bias_of_matmul(an, node, g.shape(node.input[1])[1])
        else:  # W @ X, W [M, K]: already [O, K]
            def get(a: np.ndarray) -> np.ndarray:
                return to_view(a)

            put = to_init
        key = ("dense", axis)
    else:
        return None
    unfold = dense_unfold(axis)
    blocks = _blocks(tensor, key, None, np.arange(len(own)), np.arange(len(own)), own, max_cols)
    return Consumer(node.name, tensor, init, get, put, unfold, blocks, bias, axis % len(x_shape) != 0)


def _blocks(tensor: str, sig: tuple, rows: np.ndarray | None, xcols: np.ndarray, wcols: np.ndarray,
            owner: np.ndarray, max_cols: int) -> list[Block]:
    out = []
    for part in _split(owner, max_cols):
        key = (tensor, sig, xcols[part].tobytes())
        out.append(Block(key, rows if rows is not None else np.zeros(0, np.int64), xcols[part], wcols[part],
                         owner[part]))
    return out


# ------------------------------------------------------------------------------ statistics


def _hkey(c: Consumer, b: Block) -> tuple:
    return (*b.key, c.bias is not None)


def _chunks(p: ConsumerPlan, budget: int) -> list[list[Consumer]]:
    """Consumers grouped so that the distinct H of each chunk fit in ``budget`` bytes."""
    chunks: list[list[Consumer]] = [[]]
    used: set[tuple] = set()
    size = 0
    for c in p.consumers:
        new = {_hkey(c, b): (len(b.xcols) + 1) ** 2 * 8 for b in c.blocks if _hkey(c, b) not in used}
        extra = sum(new.values())
        if chunks[-1] and size + extra > budget:
            chunks.append([])
            used, size = set(), 0
            new = {_hkey(c, b): (len(b.xcols) + 1) ** 2 * 8 for b in c.blocks}
            extra = sum(new.values())
        chunks[-1].append(c)
        used |= set(new)
        size += extra
    return chunks


def collect(ctx: ScoreContext, consumers: list[Consumer], products: list[Product] = (),
            progress: Callable[[float], None] | None = None) -> tuple[dict[tuple, np.ndarray], np.ndarray]:
    """One pass over the calibration data: H per block key (mean over rows), and the product
    consumers' per-channel errors. ``progress(fraction)`` per batch, consumer and row block."""
    an = ctx.analysis
    tensors = sorted({c.tensor for c in consumers} | {t for p in products for t in (p.a, p.b)})
    acc: dict[tuple, np.ndarray] = {}
    rows: dict[tuple, int] = {}
    perr = np.zeros(an.n_channels)
    prows = 0
    if not tensors:
        return acc, perr

    n_batches = max(1, len(ctx.batches()))
    captured = 0  # batches captured so far; a pool covers the last ones

    def tick(start: int, width: int, part: float) -> None:
        if progress is not None:
            progress(min(1.0, (start + width * part) / n_batches))

    def consume(vals: dict[str, np.ndarray], start: int, width: int) -> None:
        nonlocal prows
        done: set[tuple] = set()
        parts = max(1, len(consumers) + len(products))
        for i, c in enumerate(consumers):
            todo = [b for b in c.blocks if _hkey(c, b) not in done]
            done.update(_hkey(c, b) for b in todo)
            if not todo:
                continue
            # Samples in slices of about ROW_BLOCK unfolded rows: a big conv layer's patches of a
            # whole pool take GBs and tens of seconds; a slice is bounded and reports in between.
            v = vals[c.tensor]
            step = len(v)
            if c.splittable and len(v) > 1:
                step = max(1, ROW_BLOCK // max(1, len(c.unfold(v[:1].astype(np.float32, copy=False)))))
            for s0 in range(0, len(v), step):
                tick(start, width, (i + s0 / len(v)) / parts)
                x = c.unfold(v[s0:s0 + step].astype(np.float32, copy=False))
                for b in todo:
                    key = _hkey(c, b)
                    xb = x[:, b.xcols]
                    if c.bias is not None:
                        xb = np.concatenate([xb, np.ones((len(xb), 1), xb.dtype)], axis=1)
                    # float32 products summed in float64: H is damped by 1 %, far above the rounding
                    acc[key] = acc.get(key, 0.0) + (xb.T @ xb).astype(np.float64)
                    rows[key] = rows.get(key, 0) + len(xb)
        for j, p in enumerate(products):
            tick(start, width, (len(consumers) + j) / parts)
            a, b = vals[p.a].astype(np.float64), vals[p.b].astype(np.float64)
            own_b = _owner_along(an, p.b, -2)
            for cid in np.unique(p.owner[p.owner >= 0]):
                pa = np.nonzero(p.owner == cid)[0]
                pb = np.nonzero(own_b == cid)[0] if own_b is not None else pa
                delta = a[..., pa] @ b[..., pb, :]
                perr[cid] += 0.5 * float((delta ** 2).sum())
            prows += int(np.prod(a.shape[:-1]))

    # Small model batches are pooled (up to POOL samples) so the per-batch work is not overhead.
    pool: list[dict[str, np.ndarray]] = []
    for batch, vals in calibration.capture(an.graph, tensors, ctx.batches()):
        pool.append(vals)
        captured += 1
        tick(captured - len(pool), len(pool), 0.0)
        if len(pool) * calibration.batch_size(batch) >= POOL:
            consume({t: np.concatenate([v[t] for v in pool]) for t in tensors}, captured - len(pool), len(pool))
            pool = []
    if pool:
        consume({t: np.concatenate([v[t] for v in pool]) for t in tensors}, captured - len(pool), len(pool))
    if prows:
        perr /= prows
    return {k: v / rows[k] for k, v in acc.items()}, perr


def _damped_inverse(h: np.ndarray) -> np.ndarray:
    d = float(np.mean(np.diag(h)))
    lam = DAMP * d if d > 0 else 1e-8
    hd = h + lam * np.eye(len(h))
    try:
        lo = np.linalg.cholesky(hd)
        li = np.linalg.inv(lo)
        return li.T @ li
    except np.linalg.LinAlgError:
        return np.linalg.pinv(hd)


def _channel_errors(hinv: np.ndarray, w: np.ndarray, owner: np.ndarray, out: np.ndarray) -> None:
    """out[cid] += 1/2 tr(W_P ([H^-1]_PP)^-1 W_P^T) for every channel owning columns here."""
    cids = np.unique(owner[owner >= 0])
    by_size: dict[int, list[tuple[int, np.ndarray]]] = {}
    for cid in cids:
        cols = np.nonzero(owner == cid)[0]
        by_size.setdefault(len(cols), []).append((int(cid), cols))
    for items in by_size.values():  # equal-sized blocks solve together (batched)
        for s in range(0, len(items), CHANNEL_CHUNK):
            part = items[s:s + CHANNEL_CHUNK]
            idx = np.stack([c for _, c in part])                    # [n, k]
            m = hinv[idx[:, :, None], idx[:, None, :]]              # [n, k, k]
            wp = np.moveaxis(w[:, idx], 0, -1)                      # [n, k, O]
            sol = np.linalg.solve(m, wp)
            err = 0.5 * (wp * sol).sum(axis=(1, 2))
            np.add.at(out, np.array([c for c, _ in part]), err)


# ------------------------------------------------------------------------------ criterion


def _weight_matrix(ctx: ScoreContext, c: Consumer, b: Block) -> np.ndarray:
    g = ctx.analysis.graph
    w = c.get(g.inits[c.init].astype(np.float64))
    rows = b.rows if len(b.rows) else np.arange(w.shape[0])
    wb = w[np.ix_(rows, b.wcols)]
    if c.bias is not None:
        wb = np.concatenate([wb, g.inits[c.bias].astype(np.float64).reshape(-1)[rows, None]], axis=1)
    return wb


def prepare(ctx: ScoreContext) -> None:
    # Progress: data-free synthesis (when it runs) 0-10 %, then per chunk its pass over the data
    # and its H inversions; reported at least per batch and per H, so a cancel lands in seconds.
    # ctx.batches is built here, once: every pass (score chunks, compensation) sees the same samples
    an = ctx.analysis
    ctx.batches(lambda f: ctx.report(0.1 * f))
    p = plan(an)
    err = np.zeros(an.n_channels)
    largest = 0
    hinvs: dict[tuple, np.ndarray] = {}
    cached = 0
    chunks = _chunks(p, H_BUDGET)
    span = 0.9 / len(chunks)
    ctx.report(0.1, f"{len(p.consumers)} consumers, {len(chunks)} pass(es) over the data")
    for i, chunk in enumerate(chunks):
        base = 0.1 + i * span
        hs, perr = collect(ctx, chunk, p.products if i == 0 else [],
                           progress=lambda f, base=base: ctx.report(base + 0.5 * span * f))
        err += perr
        for j, (key, h) in enumerate(hs.items()):
            ctx.report(base + span * (0.5 + 0.5 * j / len(hs)))
            largest = max(largest, len(h))
            hinv = _damped_inverse(h)
            if cached + hinv.nbytes <= H_BUDGET:  # keep for compensation; else recollected there
                hinvs[key] = hinv
                cached += hinv.nbytes
            for c in chunk:
                for b in c.blocks:
                    if _hkey(c, b) == key:
                        _channel_errors(hinv, _weight_matrix(ctx, c, b), np.append(b.owner, -1)
                                        if c.bias is not None else b.owner, err)
    ctx.cache["obspa"] = {"plan": p, "err": err, "hinv": hinvs}
    ctx.cache["stats"] = {"criterion": "obspa", "largest_h": largest,
                          "largest_h_mib": round(largest ** 2 * 8 / 2**20, 3),
                          "consumers": len(p.consumers), "products": len(p.products),
                          "skipped_consumers": p.skipped, "passes": len(chunks),
                          "samples": sum(calibration.batch_size(b) for b in ctx.batches()),
                          "data": "calibration" if ctx.data is not None else "data-free"}
    if ctx.data is None:
        ctx.cache["stats"]["data_free_inputs"] = ("bn-matched" if calibration.synthesizes(an.graph)
                                                  else "gaussian")


def compensate(ctx: ScoreContext, removed: np.ndarray, pruned: ModelProto) -> ModelProto:
    an = ctx.analysis
    state: dict[str, Any] = ctx.cache["obspa"]
    p: ConsumerPlan = state["plan"]
    hinvs: dict[tuple, np.ndarray] = state["hinv"]
    # A weight read by several consumers (tied weights) cannot be refit for each: leave it.
    uses: dict[str, int] = {}
    for c in p.consumers:
        uses[c.init] = uses.get(c.init, 0) + 1
        if c.bias is not None:
            uses[c.bias] = uses.get(c.bias, 0) + 1
    todo = [c for c in p.consumers if uses[c.init] == 1 and (c.bias is None or uses[c.bias] == 1)
            and any(removed[b.owner[b.owner >= 0]].any() for b in c.blocks)]
    ready = [c for c in todo if all(_hkey(c, b) in hinvs for b in c.blocks)]
    missing = [c for c in todo if not all(_hkey(c, b) in hinvs for b in c.blocks)]
    new: dict[str, np.ndarray] = {}
    done, total = 0, max(1, len(todo))
    for c in ready:
        ctx.report(done / total)
        new.update(_refit(ctx, c, hinvs, removed))
        done += 1
    # H that did not fit the cache: one more pass per chunk, dropped after its chunk is refit
    for chunk in _chunks(ConsumerPlan(consumers=missing), H_BUDGET) if missing else []:
        hs, _ = collect(ctx, chunk, progress=lambda f, d=done: ctx.report(d / total))
        local = {k: _damped_inverse(h) for k, h in hs.items()}
        for c in chunk:
            ctx.report(done / total)
            new.update(_refit(ctx, c, local, removed))
            done += 1
    return _write(an, removed, pruned, new)


def _refit(ctx: ScoreContext, c: Consumer, hinvs: dict[tuple, np.ndarray],
           removed: np.ndarray) -> dict[str, np.ndarray]:
    """Closed-form refit of one consumer's kept columns (and bias); full-size arrays by name."""
    g = ctx.analysis.graph
    w = c.get(g.inits[c.init].astype(np.float64)).copy()
    bias = g.inits[c.bias].astype(np.float64).reshape(-1).copy() if c.bias is not None else None
    for b in c.blocks:
        owner = np.append(b.owner, -1) if bias is not None else b.owner
        gone = np.nonzero((owner >= 0) & removed[np.maximum(owner, 0)])[0]
        if not len(gone):
            continue
        hinv = hinvs[_hkey(c, b)]
        wb = _weight_matrix(ctx, c, b)
        # dW = -W_P ([H^-1]_PP)^-1 [H^-1]_P:  (the removed columns land on ~0, sliced away)
        dw = -np.linalg.solve(hinv[np.ix_(gone, gone)], wb[:, gone].T).T @ hinv[gone]
        rows = b.rows if len(b.rows) else np.arange(w.shape[0])
        w[np.ix_(rows, b.wcols)] += dw[:, :len(b.wcols)]
        if bias is not None:  # column blocks of one layer each refit the shared bias: add up
            bias[rows] += dw[:, -1]
    out = {c.init: c.put(w)}
    if bias is not None and c.bias is not None:
        out[c.bias] = bias.reshape(g.inits[c.bias].shape)
    return out


def _write(an: Analysis, removed: np.ndarray, pruned: ModelProto, new: dict[str, np.ndarray]) -> ModelProto:
    """Slice the refit initializers like surgery does and put them into a copy of ``pruned``."""
    m = ModelProto()
    m.CopyFrom(pruned)
    by_name = {t.name: t for t in m.graph.initializer}
    for name, arr in new.items():
        for ax, owner in an.param_owner.get(name, []):
            keep = np.nonzero((owner < 0) | ~removed[np.maximum(owner, 0)])[0]
            if len(keep) != arr.shape[ax]:
                arr = np.take(arr, keep, axis=ax)
        t = by_name.get(name)
        if t is None or tuple(t.dims) != arr.shape:
            continue  # surgery renamed or reshaped it: leave the plain removal
        dtype = an.graph.inits[name].dtype
        t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr.astype(dtype)), name))
    return m


@register("obspa", prepare=prepare, compensate=compensate)
def obspa(ctx: ScoreContext, grp: Group) -> np.ndarray:
    err = ctx.cache["obspa"]["err"][grp.channels]
    if not err.any():  # no consumer measured these channels (e.g. 3-D conv): fall back to l2
        return _place_norms(ctx, grp, 2)
    return err[None]
