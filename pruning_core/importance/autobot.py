"""AutoBot (Castells & Yeom, 2021): trainable bottleneck gates with a FLOPs-target loss.

On the frozen torch twin of the model, one gate vector per prunable group -- shared by every place
of the group, so the coupling (residual streams, concat, depthwise, heads) comes from our groups and
never from per-architecture code -- multiplies the group's channels; gates ``lambda = sigmoid(alpha)``
start at 0.9 and only ``alpha`` is trained (Adam), on

    loss = task + beta * L_F + gamma * L_B
    L_F  = (F - T) / (F_max - T)  if F > T  else  1 - F / T
    L_B  = mean over groups of mean |lambda - round(lambda)|

``task`` is cross-entropy with class labels, else distillation to the ungated model's outputs (KL
on logits, normalized MSE otherwise; ``training.losses``); without data the inputs are data-free
(``training.batches.BatchSource``). Options: ``spec.autobot``, on ``spec.device``. ``F`` is the MAC
count as a differentiable function of the gates, from the same MAC model as the real counter
(``pruning_core.twin.flops.SoftCost``; params / channels for those targets), ``F_max`` the unpruned
count and ``T`` the target. The gates of the lowest-loss batch of the last 40 % of steps are kept.
The scores are those gate values (``normalizer="none"``): global selection then ranks every channel
by its gate -- one global threshold -- and bisects that ranking against the real MAC counter, which
meets the target within 1 % and keeps >= 1 channel per group.

**Documented departure from the paper: gates sit where channels are consumed, not where they are
produced.** The paper places a bottleneck after each producer (after its activation). We insert a
``Mul`` by the gate before every consuming input of a channel (``Analysis.consumer_inputs``), the
gate laid along the tensor's channel axis (``act_owner``; positions no channel owns get 1). For 0/1
gates this graph *is* ``verify.masked_model``, which verification proves equal to the physically
pruned model: gated accuracy with 0/1 gates equals pruned accuracy by construction (and a test
checks it numerically). Producer-side gates give the pruned function at 0/1 values only where
nothing between the gate and the consumers can make a zeroed channel nonzero again (a residual add
whose other operand still carries the channel, a bias or normalization after the gate); for a
residual stream with several producers there is no single producer to gate. Consumer-side gates
hold for every group the analysis finds, so the trained gated model and the pruned model are the
same function at 0/1 gates whatever the architecture.
"""

from __future__ import annotations

import math
import time
from functools import partial

import numpy as np
import torch
from onnx import ModelProto, helper, numpy_helper

from pruning_core.analysis.groups import Analysis, Group
from pruning_core.importance.registry import ScoreContext, register
from pruning_core.selection import candidates
from pruning_core.training.batches import BatchSource, Pass, device_for
from pruning_core.training.losses import distill_loss, supervised_loss
from pruning_core.training.passes import backward_mean, twin_of
from pruning_core.twin.flops import SoftCost

Tensor = torch.Tensor

INIT_GATE = 0.9
BEST_OF_LAST = 0.4  # keep the lowest-loss gates of this final share of the steps


def gated_model(an: Analysis, trainable: np.ndarray) -> tuple[ModelProto, dict[str, tuple[str, np.ndarray]]]:
    """A copy of the model with ``x * gate`` before every consuming input of a gated channel.

    ``trainable[cid]`` says which channels get a gate; a tensor with none of them is left alone.
    Returns the model and ``{gate initializer: (tensor, owner cid per position along the channel
    axis, -1 = no channel)}``. The gate initializers hold ones shaped to broadcast along the
    tensor's channel axis: the twin replaces their value with the gate layout at run time."""
    m = an.graph.full_model()
    wanted: dict[str, list[tuple[int, str]]] = {}
    for node_name, idx, tensor in an.consumer_inputs:
        wanted.setdefault(node_name, []).append((idx, tensor))
    made: dict[str, str] = {}
    layout: dict[str, tuple[str, np.ndarray]] = {}
    nodes = []
    for node in m.graph.node:
        for idx, tensor in wanted.get(node.name, []):
            if tensor not in an.act_owner:
                continue
            ax, owner = an.act_owner[tensor]
            if not trainable[owner[owner >= 0]].any():
                continue
            if tensor not in made:
                gname, out = f"{tensor}__autobot_gate", f"{tensor}__autobot_gated"
                rank = len(an.graph.shape(tensor))
                shape = tuple(len(owner) if a == ax else 1 for a in range(rank))
                dtype = helper.tensor_dtype_to_np_dtype(an.graph.dtypes.get(tensor, 1))
                m.graph.initializer.append(numpy_helper.from_array(np.ones(shape, dtype), gname))
                nodes.append(helper.make_node("Mul", [tensor, gname], [out], name=f"{tensor}__autobot_gate"))
                made[tensor] = out
                layout[gname] = (tensor, owner.astype(np.int64))
            node.input[idx] = made[tensor]
        nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.value_info[:]
    return m, layout


class GatedTwin:
    """The frozen twin of the gated model. ``keep`` ([n_channels], float) sets every gate;
    ``None`` turns gating off (the original model, for the distillation targets)."""

    def __init__(self, an: Analysis, trainable: np.ndarray, device: torch.device | None = None) -> None:
        self.an = an
        self.device = device or torch.device("cpu")
        model, self.layout = gated_model(an, trainable)
        self.twin = twin_of(model, self.device, frozen=True)
        n = an.n_channels
        self._ext: Tensor | None = None
        gates = {}
        for gname, (_tensor, owner) in self.layout.items():
            idx = torch.as_tensor(np.where(owner >= 0, owner, n)).to(self.device)
            shape = tuple(self.twin.tensor(gname).shape)
            gates[gname] = self._gate_fn(idx, shape)
        self.twin.set_gates(gates)

    def _gate_fn(self, idx: Tensor, shape: tuple[int, ...]):
        def gate(v: Tensor) -> Tensor:
            if self._ext is None:
                return v
            return v * self._ext[idx].reshape(shape).to(v.dtype)

        return gate

    def set_keep(self, keep: Tensor | None) -> None:
        # one extra slot holding 1 for the positions no channel owns
        self._ext = None if keep is None else torch.cat([keep, keep.new_ones(1)])

    def layout_of(self, tensor: str) -> np.ndarray:
        """The current gate values along ``tensor``'s channel axis (for inspection and tests)."""
        for _gname, (t, owner) in self.layout.items():
            if t == tensor:
                assert self._ext is not None
                return self._ext.detach().cpu().numpy()[np.where(owner >= 0, owner, self.an.n_channels)]
        raise KeyError(f"tensor {tensor!r} is not gated")

    def __call__(self, feeds: dict[str, Tensor]) -> tuple[Tensor, ...]:
        return self.twin(**feeds)


def _target_loss(f: Tensor, f_max: float, t: float) -> Tensor:
    if f_max <= t:  # nothing to remove (cannot happen for a target in (0, 1); keep it finite)
        return f.new_zeros(())
    return (f - t) / (f_max - t) if f.detach().item() > t else 1 - f / t


def train_gates(ctx: ScoreContext) -> dict:
    """Train the gates (see module doc). Returns ``{"gates": {group id: lambda per channel},
    "seconds", "steps", "best_loss", "cost_fraction", "batch_mode"}``."""
    an, spec = ctx.analysis, ctx.spec
    opts = spec.autobot
    device = device_for(spec.device)
    torch.manual_seed(int(spec.seed))
    t0 = time.perf_counter()
    groups: list[Group] = candidates(an, spec.ignore)
    n = an.n_channels
    trainable = np.zeros(n, dtype=bool)
    for grp in groups:
        trainable[grp.channels[grp.removable]] = True

    if not trainable.any():  # nothing to gate: selection reports the unreachable target
        return {"gates": {grp.id: np.ones(grp.size) for grp in an.groups}, "seconds": 0.0, "steps": 0,
                "best_loss": math.nan, "cost_fraction": 1.0, "batch_mode": None}
    net = GatedTwin(an, trainable, device)
    source = BatchSource(an.graph, ctx.data, ctx.class_labels, int(spec.seed), spec.calibration.samples)
    net.set_keep(None)
    source.probe([net], device)

    # a latency target trains toward the same share of MACs; selection then meets the latency
    # measured on the runtime (pruning_core.latency_target)
    cost = SoftCost(an, "flops" if spec.target.kind == "latency" else spec.target.kind, groups)
    f_max = cost.full
    target = (1.0 - spec.target.value) * f_max
    mask = torch.as_tensor(trainable).to(device)
    alpha = torch.full((n,), math.log(INIT_GATE / (1 - INIT_GATE)), dtype=torch.float32, device=device,
                       requires_grad=True)
    # L_B: per-channel deviations summed into their group (index_add over rows), / group size, mean
    members = [grp.channels[grp.removable] for grp in groups if grp.removable.any()]
    rows = torch.as_tensor(np.concatenate([np.full(len(c), i) for i, c in enumerate(members)])
                           if members else np.zeros(0, np.int64)).to(device)
    cols = torch.as_tensor(np.concatenate(members) if members else np.zeros(0, np.int64)).to(device)
    sizes = torch.as_tensor([len(c) for c in members], dtype=torch.float32, device=device)

    def gates() -> Tensor:
        return torch.where(mask, torch.sigmoid(alpha), torch.ones_like(alpha))

    opt = torch.optim.Adam([alpha], lr=opts.lr)
    rng = np.random.default_rng(int(spec.seed))
    steps = opts.steps
    keep_from = steps - max(1, math.ceil(BEST_OF_LAST * steps))
    best_loss, best_alpha, best_f = math.inf, alpha.detach().clone(), f_max

    def task_loss(p: Pass, lam: Tensor) -> Tensor:
        """Cross-entropy with class labels, else distillation to the ungated model."""
        if p.class_labels is not None:
            net.set_keep(lam)
            return supervised_loss(source.call(net, p)[0], p.class_labels)
        net.set_keep(None)
        with torch.no_grad():
            teacher = source.call(net, p)
        net.set_keep(lam)
        return distill_loss(source.call(net, p), teacher)

    for step in range(steps):
        passes = source.next_passes(opts.batch_size, rng, device)
        opt.zero_grad(set_to_none=True)
        lam = gates()
        f = cost(lam)
        l_f = _target_loss(f, f_max, target)
        dev = (lam[cols] - torch.round(lam[cols])).abs()
        l_b = (torch.zeros_like(sizes).index_add(0, rows, dev) / sizes).mean() if len(members) else lam.new_zeros(())
        reg = opts.beta * l_f.float() + opts.gamma * l_b
        # the regularizers once per step; the task loss averaged over the step's passes (the
        # gates' graph is shared by them: retained); a step of a big model runs for a minute on a
        # few cores: report inside it too
        reg.backward(retain_graph=True)
        task_total = backward_mean(passes, partial(task_loss, lam=lam), retain_graph=True,
                                   on_pass=lambda frac, s=step: ctx.report((s + frac) / steps))
        loss = task_total + reg.detach().item()
        if step >= keep_from and loss < best_loss:
            # the gates this loss was measured with (before this step's update)
            best_loss, best_alpha, best_f = loss, alpha.detach().clone(), f.detach().item()
        if math.isfinite(loss):
            opt.step()
        if ctx.progress is not None:
            ctx.progress((step + 1) / steps, f"autobot step {step + 1}/{steps} loss {loss:.4g} "
                                             f"{spec.target.kind} {f.detach().item() / max(f_max, 1e-12):.3f}")
    net.set_keep(None)
    # float64 sigmoid: saturated float32 gates would tie at exactly 1.0 or 0.0 in the ranking
    lam = np.where(trainable, torch.sigmoid(best_alpha.double()).cpu().numpy(), 1.0)
    return {"gates": {grp.id: lam[grp.channels] for grp in an.groups},
            "seconds": time.perf_counter() - t0, "steps": steps, "best_loss": best_loss,
            "cost_fraction": best_f / f_max if f_max else 1.0, "batch_mode": source.mode}


def _prepare(ctx: ScoreContext) -> None:
    ctx.cache["autobot"] = train_gates(ctx)


@register("autobot", prepare=_prepare, normalizer="none")
def autobot(ctx: ScoreContext, grp: Group) -> np.ndarray:
    lam = ctx.cache["autobot"]["gates"][grp.id]
    # one gate per channel, shared by every place of the group
    return np.tile(lam, (max(1, len(grp.places)), 1))
