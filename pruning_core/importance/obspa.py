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

Cost is bounded:
- rows: H is estimated from at most ``ROWS`` rows per consumer per pool of samples, a seeded
  sample stratified over the samples and their positions (``unfold.sample``), gathered before
  unfolding: a detector's 3x3 conv over 80 channels at 160x160 gives 25600 patches of 720
  columns per image (74 MB of im2col, 13 GFLOP of X^T X, 36x the layer's own MACs). Time is
  linear in samples, memory independent of them;
- activations: captured in pools of at most ``POOL`` samples and ``ACT_BUDGET`` bytes, dropped
  once every consumer has taken its rows; consumers whose activations do not fit one pass get more
  passes;
- H: never wider than ``MAX_COLS`` (wider layers are split into channel-aligned column blocks,
  i.e. block-diagonal H), at most ``H_BUDGET`` bytes at once (more passes over the data);
- work: the equal-width blocks of a consumer (the groups of a grouped or depthwise conv, the
  column blocks of a wide layer) form one stack [G, k, k]: accumulated, inverted (Cholesky),
  scored and refit as batched array operations, and same-size H of different consumers are
  inverted together.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from onnx import ModelProto, numpy_helper

from pruning_core.analysis.groups import Analysis, Group
from pruning_core.importance import consumers as plans
from pruning_core.importance.consumers import Block, Consumer, ConsumerPlan, Product, Stack, owner_along
from pruning_core.importance.magnitude import _place_norms
from pruning_core.importance.registry import ScoreContext, register
from pruning_core.importance.unfold import sample
from pruning_core.ir.quant import float_value, to_stored
from pruning_core.runtime import calibration

__all__ = ["Block", "Consumer", "ConsumerPlan", "Product", "Stack", "collect", "plan"]

MAX_COLS = plans.MAX_COLS  # widest H built (4096^2 float64 = 128 MiB)
H_BUDGET = 512 << 20       # bytes of H held at once; more consumers -> more passes over the data
ACT_BUDGET = 256 << 20     # bytes of captured activations held at once (a pool)
ROWS = 4096                # rows of H per consumer per pool: a seeded, stratified sample beyond it
DAMP = 0.01                # damping: 1 % of the mean diagonal of H
CHANNEL_CHUNK = 1024       # channel blocks solved at once
POOL = 32                  # samples whose activations are processed together (at most)
SLICE_BYTES = 32 << 20     # unfolded rows gathered at once


def plan(an: Analysis, max_cols: int | None = None) -> ConsumerPlan:
    """Every consumer of channels (``consumers.plan``), H at most ``MAX_COLS`` wide."""
    return plans.plan(an, max_cols or MAX_COLS)


# ------------------------------------------------------------------------------ statistics


def _h_bytes(s: Stack) -> int:
    return s.owner.shape[0] * s.owner.shape[1] ** 2 * 8


def _act_bytes(an: Analysis, tensors: set[str]) -> int:
    """Bytes of these activations for one model batch."""
    g = an.graph
    return sum(int(np.prod(g.shape(t), dtype=np.int64)) * 4 for t in tensors)


def _tensors(consumers: Sequence[Consumer], products: Sequence[Product] = ()) -> set[str]:
    return {c.tensor for c in consumers} | {t for p in products for t in (p.a, p.b)}


def pool_batches(an: Analysis, p: ConsumerPlan, bsz: int) -> int:
    """Model batches captured and processed together: up to ``POOL`` samples, and as many as the
    whole plan's activations allow in ``ACT_BUDGET`` (the same for every pass, so the rows sampled
    do not depend on how consumers are chunked)."""
    per = max(1, _act_bytes(an, _tensors(p.consumers, p.products)))
    return int(max(1, min(max(1, POOL // max(1, bsz)), ACT_BUDGET // per)))


def _chunks(an: Analysis, p: ConsumerPlan, budget: int, pool: int = 1) -> list[list[Consumer]]:
    """Consumers grouped so that the distinct H of each chunk fit in ``budget`` bytes and a pool of
    their activations in ``ACT_BUDGET``."""
    chunks: list[list[Consumer]] = [[]]
    used: set[tuple] = set()
    tensors: set[str] = set()
    size = 0
    for c in p.consumers:
        new = {s.key: _h_bytes(s) for s in c.stacks if s.key not in used}
        extra = sum(new.values())
        act = pool * _act_bytes(an, tensors | {c.tensor})
        if chunks[-1] and (size + extra > budget or act > ACT_BUDGET):
            chunks.append([])
            used, size, tensors = set(), 0, set()
            new = {s.key: _h_bytes(s) for s in c.stacks}
            extra = sum(new.values())
        chunks[-1].append(c)
        used |= set(new)
        tensors.add(c.tensor)
        size += extra
    return chunks


def _accumulate(acc: dict[tuple, np.ndarray], s: Stack, x: np.ndarray, bias: bool) -> None:
    """acc[s.key] += X^T X of the stack's columns of rows ``x`` [n, K] (with a ones column)."""
    n = len(x)
    g, k = s.xcols.shape
    if g == 1:
        xs = x[:, s.xcols[0]][None]                                   # [1, n, k]
    else:
        xs = x[:, s.xcols.reshape(-1)].reshape(n, g, k).transpose(1, 0, 2)
    h = acc.get(s.key)
    if h is None:
        h = acc[s.key] = np.zeros((g, k + bias, k + bias))
    # float32 products summed in float64: H is damped by 1 %, far above the rounding
    h[:, :k, :k] += np.matmul(xs.transpose(0, 2, 1), xs)
    if bias:  # the ones column: X^T 1 and n, without building it
        sums = xs.sum(axis=1, dtype=np.float64)
        h[:, :k, k] += sums
        h[:, k, :k] += sums
        h[:, k, k] += n


def collect(ctx: ScoreContext, consumers: Sequence[Consumer], products: Sequence[Product] = (),
            progress: Callable[[float], None] | None = None, pool: int = 1,
            stats: dict[str, Any] | None = None) -> tuple[dict[tuple, np.ndarray], np.ndarray]:
    """One pass over the calibration data: H per stack key (mean over rows), and the product
    consumers' per-channel errors. ``progress(fraction)`` per pool and consumer. ``stats`` gets
    the most rows any consumer took from one pool (``max_rows_per_pool``)."""
    an = ctx.analysis
    tensors = sorted(_tensors(consumers, products))
    acc: dict[tuple, np.ndarray] = {}
    rows: dict[tuple, int] = {}
    perr = np.zeros(an.n_channels)
    prows = 0
    stats = {} if stats is None else stats
    if not tensors:
        return acc, perr
    batches = ctx.batches()
    n_pools = max(1, -(-len(batches) // pool))
    parts = max(1, len(consumers) + len(products))

    def consume(vals: dict[str, np.ndarray], ip: int) -> None:
        nonlocal prows
        done: set[tuple] = set()
        for i, c in enumerate(consumers):
            todo = [s for s in c.stacks if s.key not in done]
            done.update(s.key for s in todo)
            if not todo:
                continue
            if progress is not None:
                progress((ip + i / parts) / n_pools)
            v = vals[c.tensor]
            items, per = c.rows.items(v.shape), c.rows.per_item(v.shape)
            rng = np.random.default_rng([int(ctx.spec.seed), ip, zlib.crc32(repr((c.tensor, c.sig)).encode())])
            idx = sample(items, per, ROWS, rng)
            idx = np.arange(items * per) if idx is None else idx
            if not len(idx):
                continue
            width = 1 + max(int(s.xcols.max()) for s in c.stacks)  # K: columns of a row
            step = max(1, SLICE_BYTES // (4 * width))
            v32 = v.astype(np.float32, copy=False)
            for s0 in range(0, len(idx), step):
                x = c.rows.take(v32, idx[s0:s0 + step])
                for s in todo:
                    _accumulate(acc, s, x, c.bias is not None)
            for s in todo:
                rows[s.key] = rows.get(s.key, 0) + len(idx)
            stats["max_rows_per_pool"] = max(stats.get("max_rows_per_pool", 0), len(idx))
            stats["sampled"] = stats.get("sampled", False) or len(idx) < items * per
        for j, p in enumerate(products):
            if progress is not None:
                progress((ip + (len(consumers) + j) / parts) / n_pools)
            a, b = vals[p.a].astype(np.float64), vals[p.b].astype(np.float64)
            own_b = owner_along(an, p.b, -2)
            for cid in np.unique(p.owner[p.owner >= 0]):
                pa = np.nonzero(p.owner == cid)[0]
                pb = np.nonzero(own_b == cid)[0] if own_b is not None else pa
                delta = a[..., pa] @ b[..., pb, :]
                perr[cid] += 0.5 * float((delta ** 2).sum())
            prows += int(np.prod(a.shape[:-1]))

    held: list[dict[str, np.ndarray]] = []
    ip = 0
    for i, (_, vals) in enumerate(calibration.capture(an.graph, tensors, batches)):
        held.append(vals)
        if len(held) == pool or i == len(batches) - 1:
            pooled = held[0] if len(held) == 1 else {t: np.concatenate([v[t] for v in held]) for t in tensors}
            held = []
            consume(pooled, ip)
            del pooled
            ip += 1
    if prows:
        perr /= prows
    for k, h in acc.items():
        h /= rows[k]
    return acc, perr


# ------------------------------------------------------------------------------ linear algebra


def _damped_inverse(h: np.ndarray) -> np.ndarray:
    """Damped inverses of a stack [G, k, k] (float64), batched: a Cholesky factor and the inverse
    from it (torch: two k x k buffers per block, ``h`` is damped in place and not kept); pinv for a
    block that is not positive definite."""
    import torch

    t = torch.from_numpy(h)
    diag = t.diagonal(dim1=-2, dim2=-1)
    mean = diag.mean(dim=-1)
    diag += torch.where(mean > 0, DAMP * mean, torch.full_like(mean, 1e-8))[:, None]
    lo, info = torch.linalg.cholesky_ex(t)
    out = torch.cholesky_inverse(lo)
    del lo
    for i in torch.nonzero(info).flatten().tolist():
        out[i] = torch.linalg.pinv(t[i])
    return out.numpy()


def _invert_all(hs: dict[tuple, np.ndarray], batch_bytes: int = 64 << 20) -> None:
    """Replace every H of ``hs`` by its damped inverse, same-size H of different consumers (and
    the blocks of each stack) inverted together in batches of about ``batch_bytes``."""
    by_k: dict[int, list[tuple]] = {}
    for key, h in hs.items():
        by_k.setdefault(h.shape[-1], []).append(key)
    for keys in by_k.values():
        run: list[tuple] = []
        size = 0
        for key in [*keys, None]:
            if run and (key is None or size + hs[key].nbytes > batch_bytes):
                inv = _damped_inverse(np.concatenate([hs[r] for r in run]) if len(run) > 1 else hs[run[0]])
                off = 0
                for r in run:
                    n = len(hs[r])
                    hs[r] = inv[off:off + n]
                    off += n
                run, size = [], 0
            if key is not None:
                run.append(key)
                size += hs[key].nbytes


def _runs(ids: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The columns of each (block, id) of ``ids`` [G, k] (-1: none), by their count:
    {count: (block [n], columns [n, count], id [n])}."""
    g, col = np.nonzero(ids >= 0)
    if not len(g):
        return {}
    cid = ids[g, col]
    order = np.lexsort((col, cid, g))
    g, col, cid = g[order], col[order], cid[order]
    new = np.ones(len(g), bool)
    new[1:] = (g[1:] != g[:-1]) | (cid[1:] != cid[:-1])
    starts = np.nonzero(new)[0]
    sizes = np.diff(np.append(starts, len(g)))
    out = {}
    for size in np.unique(sizes):
        st = starts[sizes == size]
        out[int(size)] = (g[st], col[st[:, None] + np.arange(size)], cid[st])
    return out


def _slices(n: int, per: int) -> list[slice]:
    """Slices of ``n`` problems of ``per`` elements each: at most ``CHANNEL_CHUNK`` problems and
    about 4M elements at once."""
    step = max(1, min(CHANNEL_CHUNK, (1 << 22) // max(1, per)))
    return [slice(i, i + step) for i in range(0, n, step)]


def _weights(ctx: ScoreContext, c: Consumer) -> tuple[np.ndarray, np.ndarray | None]:
    """The consumer's weight matrix [O, K] and bias [O] (None), float64 copies."""
    g = ctx.analysis.graph
    w = np.array(c.get(float_value(g, c.init).astype(np.float64)))
    return w, (float_value(g, c.bias).astype(np.float64).reshape(-1).copy() if c.bias is not None else None)


def _wstack(w: np.ndarray, bias: np.ndarray | None, s: Stack) -> np.ndarray:
    """[G, r, k (+1)]: every block's rows of the weight matrix at its columns (and the bias)."""
    if s.rows is None:
        ws = np.moveaxis(w[:, s.wcols], 1, 0)                   # [G, O, k]
        bs = None if bias is None else np.broadcast_to(bias, (len(s.wcols), len(bias)))
    else:
        ws = w[s.rows[:, :, None], s.wcols[:, None, :]]         # [G, r, k]
        bs = None if bias is None else bias[s.rows]
    return ws if bs is None else np.concatenate([ws, bs[..., None]], axis=2)


def _channel_errors(hinv: np.ndarray, ws: np.ndarray, owner: np.ndarray, out: np.ndarray) -> None:
    """out[cid] += 1/2 tr(W_P ([H^-1]_PP)^-1 W_P^T) for every channel owning columns of the stack;
    the channels of equal column count solve together (batched over channels and blocks)."""
    for size, (gi, cols, cids) in _runs(owner).items():
        for sl in _slices(len(gi), size * (size + ws.shape[1])):
            g, c = gi[sl], cols[sl]
            m = hinv[g[:, None, None], c[:, :, None], c[:, None, :]]    # [n, k, k]
            wp = ws[g[:, None], :, c]                                    # [n, k, O]
            sol = np.linalg.solve(m, wp)
            np.add.at(out, cids[sl], 0.5 * (wp * sol).sum(axis=(1, 2)))


# ------------------------------------------------------------------------------ criterion


def prepare(ctx: ScoreContext) -> None:
    # Progress: data-free synthesis (when it runs) 0-10 %, then per chunk its pass over the data
    # (per pool and consumer) and its scoring (per consumer), so a cancel lands in seconds.
    # ctx.batches is built here, once: every pass (score chunks, compensation) sees the same samples
    an = ctx.analysis
    batches = ctx.batches(lambda f: ctx.report(0.1 * f))
    p = plan(an)
    pool = min(max(1, len(batches)), pool_batches(an, p, calibration.batch_size(batches[0]) if batches else 1))
    err = np.zeros(an.n_channels)
    largest = 0
    hinvs: dict[tuple, np.ndarray] = {}
    cached = 0
    chunks = _chunks(an, p, H_BUDGET, pool)
    span = 0.9 / len(chunks)
    rows: dict[str, Any] = {}
    ctx.report(0.1, f"{len(p.consumers)} consumers, {len(chunks)} pass(es) over the data")
    for i, chunk in enumerate(chunks):
        base = 0.1 + i * span
        hs, perr = collect(ctx, chunk, p.products if i == 0 else [], pool=pool, stats=rows,
                           progress=lambda f, base=base: ctx.report(base + 0.5 * span * f))
        err += perr
        _invert_all(hs)
        for key, hinv in hs.items():
            largest = max(largest, hinv.shape[-1])
            if cached + hinv.nbytes <= H_BUDGET:  # keep for compensation; else recollected there
                hinvs[key] = hinv
                cached += hinv.nbytes
        for j, c in enumerate(chunk):
            ctx.report(base + span * (0.5 + 0.5 * j / len(chunk)))
            w, bias = _weights(ctx, c)
            for s in c.stacks:
                _channel_errors(hs[s.key], _wstack(w, bias, s), s.owner, err)
        del hs
    ctx.cache["obspa"] = {"plan": p, "err": err, "hinv": hinvs, "pool": pool}
    ctx.cache["stats"] = {"criterion": "obspa", "largest_h": largest,
                          "largest_h_mib": round(largest ** 2 * 8 / 2**20, 3),
                          "consumers": len(p.consumers), "products": len(p.products),
                          "skipped_consumers": p.skipped, "passes": len(chunks),
                          "samples": sum(calibration.batch_size(b) for b in batches),
                          "pool_samples": pool * (calibration.batch_size(batches[0]) if batches else 1),
                          "rows_cap": ROWS, "max_rows_per_pool": rows.get("max_rows_per_pool", 0),
                          "rows_sampled": bool(rows.get("sampled", False)),
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
    ready = [c for c in todo if all(s.key in hinvs for s in c.stacks)]
    missing = [c for c in todo if not all(s.key in hinvs for s in c.stacks)]
    new: dict[str, np.ndarray] = {}
    done, total = 0, max(1, len(todo))
    for c in ready:
        ctx.report(done / total)
        new.update(_narrow(an, removed, _refit(ctx, c, hinvs, removed)))
        done += 1
    # H that did not fit the cache: one more pass per chunk, dropped after its chunk is refit
    for chunk in _chunks(an, ConsumerPlan(consumers=missing), H_BUDGET, state["pool"]) if missing else []:
        hs, _ = collect(ctx, chunk, progress=lambda f, d=done: ctx.report(d / total), pool=state["pool"])
        _invert_all(hs)
        for c in chunk:
            ctx.report(done / total)
            new.update(_narrow(an, removed, _refit(ctx, c, hs, removed)))
            done += 1
    return _write(pruned, new)


def _refit(ctx: ScoreContext, c: Consumer, hinvs: dict[tuple, np.ndarray],
           removed: np.ndarray) -> dict[str, np.ndarray]:
    """Closed-form refit of one consumer's kept columns (and bias); full-size arrays by name.
    The blocks of a stack with equally many removed columns solve together."""
    g = ctx.analysis.graph
    w0, b0 = _weights(ctx, c)
    w, bias = w0.copy(), None if b0 is None else b0.copy()
    for s in c.stacks:
        gone = (s.owner >= 0) & removed[np.maximum(s.owner, 0)]
        if not gone.any():
            continue
        hinv, ws, k = hinvs[s.key], _wstack(w0, b0, s), s.xcols.shape[1]
        for q, (gi, cols, _) in _runs(np.where(gone, 0, -1)).items():
            for sl in _slices(len(gi), q * (q + 2 * ws.shape[1] + hinv.shape[-1])):
                gb, cb = gi[sl], cols[sl]
                # dW = -W_P ([H^-1]_PP)^-1 [H^-1]_P:  (the removed columns land on ~0, sliced away)
                m = hinv[gb[:, None, None], cb[:, :, None], cb[:, None, :]]      # [n, q, q]
                sol = np.linalg.solve(m, ws[gb[:, None], :, cb])                  # [n, q, r]
                dw = -np.matmul(sol.transpose(0, 2, 1), hinv[gb[:, None], cb, :])  # [n, r, k (+1)]
                if s.rows is None:
                    w[:, s.wcols[gb]] += np.moveaxis(dw[:, :, :k], 0, 1)
                    if bias is not None:  # column blocks of one layer each refit the shared bias
                        bias += dw[:, :, k].sum(axis=0)
                else:
                    w[s.rows[gb][:, :, None], s.wcols[gb][:, None, :]] += dw[:, :, :k]
                    if bias is not None:
                        np.add.at(bias, s.rows[gb], dw[:, :, k])
    out = {c.init: c.put(w)}
    if bias is not None and c.bias is not None:
        out[c.bias] = bias.reshape(g.inits[c.bias].shape)
    return out


def _narrow(an: Analysis, removed: np.ndarray, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Refit arrays sliced like surgery slices them, in their initializer's dtype (kept per
    consumer as they come: float64 full-size copies of every weight would be 4x the model)."""
    out = {}
    for name, arr in arrays.items():
        kept: dict[int, np.ndarray] = {}
        for ax, owner in an.param_owner.get(name, []):
            keep = np.nonzero((owner < 0) | ~removed[np.maximum(owner, 0)])[0]
            if len(keep) != arr.shape[ax]:
                arr = np.take(arr, keep, axis=ax)
                kept[ax] = keep
        out[name] = to_stored(an.graph, name, arr, kept)  # a QDQ weight: requantized, its scale kept
    return out


def _write(pruned: ModelProto, new: dict[str, np.ndarray]) -> ModelProto:
    """A copy of ``pruned`` with the refit initializers in place."""
    m = ModelProto()
    m.CopyFrom(pruned)
    by_name = {t.name: t for t in m.graph.initializer}
    for name, arr in new.items():
        t = by_name.get(name)
        if t is None or tuple(t.dims) != arr.shape:
            continue  # surgery renamed or reshaped it: leave the plain removal
        t.CopyFrom(numpy_helper.from_array(arr, name))
    return m


@register("obspa", prepare=prepare, compensate=compensate)
def obspa(ctx: ScoreContext, grp: Group) -> np.ndarray:
    err = ctx.cache["obspa"]["err"][grp.channels]
    if not err.any():  # no consumer measured these channels (e.g. 3-D conv): fall back to l2
        return _place_norms(ctx, grp, 2)
    return err[None]
