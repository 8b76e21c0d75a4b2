"""``apply_plan(module, plan)``: prune the user's own ``nn.Module`` in place from a ``plan.json``.

The service prunes a *program* (the .pt2 the user uploaded); the user trains a *module*. The plan
names every parameter by its state-dict key and says which indices of which dims it keeps, so the
module can be cut to the same shapes, after which the pruned weights load as usual::

    model = MyModel()                              # the user's own code
    apply_plan(model, "out/plan.json")
    model.load_state_dict(torch.export.load("out/pruned.pt2").state_dict)
    # ... fine-tune in the user's own pipeline

Besides the tensors, the size attributes the module's ``forward`` reads are updated: ``in_channels`` /
``out_channels`` / ``groups`` (Conv, ConvTranspose), ``in_features`` / ``out_features`` (Linear),
``num_features`` (BatchNorm, InstanceNorm), ``normalized_shape`` (LayerNorm), ``num_channels`` /
``num_groups`` (GroupNorm), ``num_embeddings`` / ``embedding_dim`` (Embedding), ``nf`` (transformers'
Conv1D) and attention head counts where an attention module keeps them (``num_attention_heads`` /
``attention_head_size`` / ``all_head_size``, ``num_heads`` / ``head_dim`` / ``split_size``, ...).
Everything is checked before anything changes: a module that does not match the plan (a missing
parameter, a different original shape) is refused with a PlanMismatchError naming the parameter,
and left untouched.

What cannot follow: sizes written as literals in ``forward`` (``torch.split(x, [12, 20, 16], 1)``,
``x.chunk(2, 1)`` on an axis that lost channels unevenly, ``view(b, 4, 16, h, w)``). The module then
fails or differs after loading; ``pruned.pt2`` itself is always consistent.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruning_core.plan import Plan, PlanError, TensorPlan, as_plan

__all__ = ["PlanMismatchError", "apply_plan"]

HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_head", "n_heads")
HEAD_SIZE_ATTRS = ("attention_head_size", "head_dim", "head_size", "d_k")
INNER_ATTRS = ("all_head_size", "split_size", "inner_dim")
# children that project the heads back to the model width: their output is not a head axis, even
# when it has the same size (o: [d, d])
OUTPUT_PROJECTIONS = frozenset({"o", "out", "wo", "out_proj", "o_proj", "c_proj", "proj", "dense", "output"})


class PlanMismatchError(PlanError):
    """The module is not the model the plan was made for (or cannot hold the pruned shapes)."""


@dataclass
class _Cut:
    key: str
    old: torch.Tensor
    plan: TensorPlan


def apply_plan(
    module: nn.Module, plan: Plan | Mapping[str, Any] | str | os.PathLike[str], *, prefix: str | None = None
) -> nn.Module:
    """Cut ``module``'s parameters and buffers to the plan's shapes, in place; returns ``module``.

    ``plan``: a Plan, the parsed plan.json, or its path. ``prefix``: what to strip from the plan's
    names to get the module's (the plan of a wrapper ``model.bert...`` applied to the inner model);
    ``None`` finds it. Raises PlanMismatchError, naming the parameter, when the module does not
    match; the module is not modified then.
    """
    p = as_plan(plan)
    state = _state(module)
    prefix = _find_prefix(p, state) if prefix is None else prefix
    entries = {k[len(prefix) :]: t for k, t in p.tensors.items() if k.startswith(prefix)}
    if not entries:
        raise PlanMismatchError(f"no tensor of the plan starts with prefix {prefix!r}")

    # 1. check everything first: a half-pruned module is worse than an error
    for key, t in entries.items():
        if key not in state:
            if t.kind == "constant":  # non-persistent buffers / lifted constants: optional
                continue
            raise PlanMismatchError(
                f"the module has no {t.kind} {key!r}, which the plan prunes"
                if t.pruned
                else f"the module has no {t.kind} {key!r} (plan: {_src(p)})"
            )
        have = tuple(state[key].shape)
        if have != tuple(t.shape):
            raise PlanMismatchError(f"{key!r} has shape {list(have)}, the plan was made for {list(t.shape)}")
    extra = [k for k, v in state.items() if k not in entries and not _optional(module, k)]
    if extra:
        raise PlanMismatchError(
            f"the module has {len(extra)} tensor(s) the plan does not know, e.g. {extra[0]!r}: "
            "not the model the plan was made for"
        )
    cuts = {key: _Cut(key, state[key], t) for key, t in entries.items() if key in state and t.pruned}
    updates = _attribute_updates(module, cuts)  # raises before any change when a module cannot follow

    # 2. cut: tied tensors (one object under two names) are cut once and stay tied
    done: dict[int, torch.Tensor] = {}
    for key, cut in cuts.items():
        owner, leaf = _owner(module, key)
        new = done.get(id(cut.old))
        if new is None:
            with torch.no_grad():
                data = cut.old.detach()
                for ax, dp in sorted(cut.plan.dims.items()):
                    data = data.index_select(ax, torch.tensor(dp.kept, dtype=torch.long, device=data.device))
                data = data.contiguous()
            new = (
                nn.Parameter(data, requires_grad=cut.old.requires_grad)
                if isinstance(cut.old, nn.Parameter)
                else data
            )
            done[id(cut.old)] = new
        if isinstance(new, nn.Parameter):
            owner._parameters[leaf] = new
        else:
            owner._buffers[leaf] = new
    for mod, attrs in updates:
        for name, value in attrs.items():
            setattr(mod, name, value)
    return module


# --------------------------------------------------------------------------------- matching


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in module.named_parameters(remove_duplicate=False):
        out[k] = v
    for k, v in module.named_buffers(remove_duplicate=False):
        out[k] = v
    return out


def _optional(module: nn.Module, key: str) -> bool:
    """Non-persistent buffers are not part of the program's state: the plan may not list them."""
    owner, leaf = _owner(module, key)
    return leaf in owner._buffers and leaf in owner._non_persistent_buffers_set


def _find_prefix(p: Plan, state: Mapping[str, torch.Tensor]) -> str:
    """The prefix to strip from plan names so that they name the module's tensors: "" when the
    module is the exported one, "model." when the export wrapped it."""
    keys = [k for k, t in p.tensors.items() if t.kind != "constant"]
    if not keys or all(k in state for k in keys):
        return ""
    candidates = {k[: i + 1] for k in keys for i, c in enumerate(k) if c == "."}
    for cand in sorted(candidates, key=len):
        under = [k for k in keys if k.startswith(cand)]
        if under and all(k[len(cand) :] in state for k in under):
            return cand
    return ""  # no prefix fits: the checks name the first tensor that does not match


def _owner(module: nn.Module, key: str) -> tuple[nn.Module, str]:
    *path, leaf = key.split(".")
    return (module.get_submodule(".".join(path)) if path else module), leaf


def _src(p: Plan) -> str:
    return str(p.source.get("file", "plan"))


# ------------------------------------------------------------------------ size attributes


def _attribute_updates(module: nn.Module, cuts: Mapping[str, _Cut]) -> list[tuple[nn.Module, dict[str, Any]]]:
    """The size attributes each module must take after the cut; computed before anything changes."""
    updates: list[tuple[nn.Module, dict[str, Any]]] = []
    for name, mod in module.named_modules():
        pre = f"{name}." if name else ""

        def cut(leaf: str, pre: str = pre) -> _Cut | None:
            return cuts.get(pre + leaf)

        def new_shape(leaf: str, mod: nn.Module = mod, pre: str = pre) -> tuple[int, ...] | None:
            c = cuts.get(pre + leaf)
            if c is not None:
                return tuple(c.plan.pruned_shape)
            t = getattr(mod, leaf, None)
            return tuple(t.shape) if isinstance(t, torch.Tensor) else None

        attrs: dict[str, Any] = {}
        if isinstance(mod, nn.modules.conv._ConvNd) and cut("weight") is not None:
            attrs = _conv_attrs(name, mod, cut("weight"))  # type: ignore[arg-type]
        elif isinstance(mod, nn.Linear) and cut("weight") is not None:
            out_f, in_f = new_shape("weight")  # type: ignore[misc]
            attrs = {"out_features": out_f, "in_features": in_f}
        elif isinstance(mod, nn.modules.batchnorm._NormBase):  # BatchNorm*, InstanceNorm*
            shp = new_shape("weight") or new_shape("running_mean")
            if shp is not None and shp[0] != mod.num_features:
                attrs = {"num_features": shp[0]}
        elif isinstance(mod, nn.LayerNorm) and (cut("weight") or cut("bias")):
            shp = new_shape("weight") or new_shape("bias")
            attrs = {"normalized_shape": tuple(shp)}  # type: ignore[arg-type]
        elif isinstance(mod, nn.GroupNorm) and (cut("weight") or cut("bias")):
            attrs = _groupnorm_attrs(name, mod, (cut("weight") or cut("bias")))  # type: ignore[arg-type]
        elif isinstance(mod, nn.Embedding | nn.EmbeddingBag) and cut("weight") is not None:
            c = cut("weight")
            assert c is not None
            if 0 in c.plan.dims and getattr(mod, "padding_idx", None) is not None:
                raise PlanMismatchError(
                    f"{pre}weight: the plan removes rows of an embedding with a padding_idx"
                )
            n, d = c.plan.pruned_shape
            attrs = {"num_embeddings": n, "embedding_dim": d}
        elif isinstance(mod, nn.MultiheadAttention) and any(
            cut(x) for x in ("in_proj_weight", "q_proj_weight", "out_proj.weight")
        ):
            raise PlanMismatchError(
                f"{name or 'module'}: nn.MultiheadAttention keeps one embed_dim for the model "
                "and its heads, so it cannot hold pruned heads; use separate Linear layers"
            )
        elif type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and cut("weight") is not None:
            attrs = {"nf": new_shape("weight")[1]}  # type: ignore[index]  # transformers' Conv1D: [in, out]
        heads = _head_attrs(name, mod, cuts)
        if heads:
            attrs.update(heads)
        if attrs:
            updates.append((mod, attrs))
    return updates


def _kept_groups(where: str, kept: list[int], per_group: int, what: str) -> tuple[int, int]:
    """(groups kept, channels per kept group) of an axis made of equal groups; each kept group must
    keep the same number of channels for the module to express it."""
    counts: dict[int, int] = {}
    for i in kept:
        counts[i // per_group] = counts.get(i // per_group, 0) + 1
    sizes = set(counts.values())
    if len(sizes) > 1:
        raise PlanMismatchError(
            f"{where}: the plan keeps {sorted(counts.values())} {what} in different groups; "
            "the module needs the same number in every group"
        )
    return len(counts), (sizes.pop() if sizes else 0)


def _conv_attrs(name: str, mod: nn.modules.conv._ConvNd, c: _Cut) -> dict[str, Any]:
    w_old = tuple(c.plan.shape)
    w_new = tuple(c.plan.pruned_shape)
    g = mod.groups
    if mod.transposed:  # weight [in, out / groups, *k]
        groups = g
        if 0 in c.plan.dims and g > 1:
            groups, _ = _kept_groups(f"{name}.weight", c.plan.dims[0].kept, w_old[0] // g, "input channels")
        return {"in_channels": w_new[0], "out_channels": w_new[1] * groups, "groups": groups}
    groups = g  # weight [out, in / groups, *k]
    if 0 in c.plan.dims and g > 1:
        groups, _ = _kept_groups(f"{name}.weight", c.plan.dims[0].kept, w_old[0] // g, "output channels")
    return {"out_channels": w_new[0], "in_channels": w_new[1] * groups, "groups": groups}


def _groupnorm_attrs(name: str, mod: nn.GroupNorm, c: _Cut) -> dict[str, Any]:
    kept = c.plan.dims[0].kept if 0 in c.plan.dims else list(range(mod.num_channels))
    groups, _ = _kept_groups(f"{name}.weight", kept, mod.num_channels // mod.num_groups, "channels")
    return {"num_channels": len(kept), "num_groups": groups}


def _head_attrs(name: str, mod: nn.Module, cuts: Mapping[str, _Cut]) -> dict[str, Any]:
    """Head count / head size of an attention module, from how its query projection was cut.

    Whole heads removed -> fewer heads; the same dims removed in every head -> smaller heads. The
    softmax scale stays what it was when the module keeps it in an attribute (``scaling``), as the
    pruned graph does; a module computing it from the head size would change its outputs."""
    count_attr = next((a for a in HEAD_COUNT_ATTRS if isinstance(getattr(mod, a, None), int)), None)
    size_attr = next((a for a in HEAD_SIZE_ATTRS if isinstance(getattr(mod, a, None), int)), None)
    if count_attr is None:
        return {}
    heads = int(getattr(mod, count_attr))
    head_size = int(getattr(mod, size_attr)) if size_attr else None
    if heads <= 0 or head_size is None or head_size <= 0:
        return {}
    inner = heads * head_size
    pre = f"{name}." if name else ""
    # the projections that make the heads: children whose output is `inner` (q, k, v) or 3*inner (fused)
    kept_q: list[int] | None = None
    for child_name, child in mod.named_children():
        if child_name in OUTPUT_PROJECTIONS:
            continue
        w = getattr(child, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            continue
        out_axis = 1 if type(child).__name__ == "Conv1D" else 0  # transformers' Conv1D is [in, out]
        c = cuts.get(f"{pre}{child_name}.weight")
        if c is None or out_axis not in c.plan.dims:
            continue
        n_out = c.plan.shape[out_axis]
        kept = c.plan.dims[out_axis].kept
        if n_out == inner:
            parts = [kept]
        elif n_out == 3 * inner:
            parts = [[i - k * inner for i in kept if k * inner <= i < (k + 1) * inner] for k in range(3)]
        else:
            continue
        for part in parts:
            if kept_q is None:
                kept_q = part
            elif len(part) != len(kept_q):
                raise PlanMismatchError(
                    f"{name}: the plan keeps {len(kept_q)} and {len(part)} dims in the "
                    f"projections of one attention module; {type(mod).__name__} uses one "
                    "head size for queries, keys and values"
                )
    if kept_q is None or len(kept_q) == inner:
        return {}
    n_heads, size = _kept_groups(f"{pre}{count_attr}", kept_q, head_size, "dims")
    attrs: dict[str, Any] = {count_attr: n_heads}
    if size_attr:
        attrs[size_attr] = size
    for a in INNER_ATTRS:
        if isinstance(getattr(mod, a, None), int) and getattr(mod, a) == inner:
            attrs[a] = n_heads * size
    return attrs


class _CallableModule(types.ModuleType):
    """``client.apply_plan`` names both this module and the function: importing the module binds
    the name on the package to the module, so the module forwards calls to the function and
    ``client.apply_plan(model, plan)`` works whichever of the two the name holds."""

    def __call__(
        self,
        module: nn.Module,
        plan: Plan | Mapping[str, Any] | str | os.PathLike[str],
        *,
        prefix: str | None = None,
    ) -> nn.Module:
        return apply_plan(module, plan, prefix=prefix)


sys.modules[__name__].__class__ = _CallableModule
