"""The pruning plan (``plan.json``): which indices of which dims every parameter keeps.

A plan is how a PyTorch user carries a pruning result back into their own code: it names every
original parameter and buffer (state-dict keys, e.g. ``encoder.layer.0.attention.self.query.weight``),
gives its original and pruned shapes and, for each pruned dim, the kept indices and the dependency
groups the removed channels came from. ``client.apply_plan`` reads it to resize an ``nn.Module``
in place; the pruned values themselves travel in ``pruned.pt2`` (they may have been compensated,
so the plan never carries values).

Format (``"version": 1``)::

    {"format": "spa.pruning-plan", "version": 1,
     "source": {"file": "model.pt2", "kind": "pytorch"},
     "groups": {"3": {"name": "conv1.weight", "kept": 12, "total": 16}},      # groups that lost channels
     "tensors": {"conv1.weight": {"kind": "parameter", "shape": [16, 3, 3, 3],
                                  "pruned_shape": [12, 3, 3, 3],
                                  "dims": {"0": {"kept": [0, 2, ...], "groups": [3]}}},
                 "bn1.num_batches_tracked": {"kind": "buffer", "shape": [], "pruned_shape": []}},
     "unmapped": [{"tensor": "...", "reason": "..."}]}

Dims are in the PyTorch parameter's own layout (an ONNX initializer that holds the transpose of a
weight is mapped back). This module is pure Python + numpy so the client can read plans without
torch or onnx.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pruning_core.errors import PruneError, describe

if TYPE_CHECKING:  # pragma: no cover
    from pruning_core.analysis.groups import Analysis

PLAN_FORMAT = "spa.pruning-plan"
PLAN_VERSION = 1
TENSOR_KINDS = ("parameter", "buffer", "constant")


class PlanError(PruneError, ValueError):
    """A plan file that cannot be read, or a plan that does not fit the model it is applied to."""

    code = "invalid_plan"


@dataclass
class DimPlan:
    kept: list[int]  # kept indices along this dim, ascending, in the original numbering
    groups: list[int] = field(default_factory=list)  # ids of the groups that removed indices here


@dataclass
class TensorPlan:
    kind: str  # "parameter" | "buffer" (persistent) | "constant" (non-persistent)
    shape: tuple[int, ...]
    pruned_shape: tuple[int, ...]
    dims: dict[int, DimPlan] = field(default_factory=dict)  # only dims that change
    alias_of: str | None = None  # tied parameter (e.g. lm_head.weight = wte.weight)

    @property
    def pruned(self) -> bool:
        return bool(self.dims)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "shape": list(self.shape),
            "pruned_shape": list(self.pruned_shape),
        }
        if self.dims:
            d["dims"] = {
                str(ax): {"kept": dp.kept, "groups": dp.groups} for ax, dp in sorted(self.dims.items())
            }
        if self.alias_of:
            d["alias_of"] = self.alias_of
        return d


@dataclass
class Plan:
    tensors: dict[str, TensorPlan]
    groups: dict[int, dict[str, Any]] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    unmapped: list[dict[str, str]] = field(default_factory=list)
    version: int = PLAN_VERSION

    def pruned(self) -> dict[str, TensorPlan]:
        return {k: t for k, t in self.tensors.items() if t.pruned}

    # ------------------------------------------------------------------ (de)serialization

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": self.version,
            "source": self.source,
            "groups": {str(k): v for k, v in sorted(self.groups.items())},
            "tensors": {k: t.to_dict() for k, t in self.tensors.items()},
            "unmapped": self.unmapped,
        }

    def dumps(self) -> str:
        """JSON with one line per tensor and per group: diffable and readable at a glance, while
        long index lists do not explode into one line per number."""
        d = self.to_dict()

        def one(v: Any) -> str:
            return json.dumps(v, separators=(", ", ": "))

        def block(items: Mapping[str, Any]) -> str:
            if not items:
                return "{}"
            return "{\n" + ",\n".join(f"  {one(k)}: {one(v)}" for k, v in items.items()) + "\n }"

        head = ",\n".join(f" {one(k)}: {one(d[k])}" for k in ("format", "version", "source"))
        return (
            f'{{\n{head},\n "groups": {block(d["groups"])},\n "tensors": {block(d["tensors"])},\n'
            f' "unmapped": {one(d["unmapped"])}\n}}\n'
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        p.write_text(self.dumps())
        return p

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        if not isinstance(d, Mapping) or d.get("format") != PLAN_FORMAT:
            raise PlanError(f'not a pruning plan (expected "format": {PLAN_FORMAT!r})')
        version = d.get("version")
        if version != PLAN_VERSION:
            raise PlanError(
                f"plan version {version!r} is not supported (this code reads version {PLAN_VERSION})"
            )
        tensors: dict[str, TensorPlan] = {}
        try:
            for name, t in d["tensors"].items():
                kind = t["kind"]
                if kind not in TENSOR_KINDS:
                    raise PlanError(f"tensor {name!r}: unknown kind {kind!r}")
                shape = tuple(int(x) for x in t["shape"])
                pruned_shape = tuple(int(x) for x in t["pruned_shape"])
                dims = {
                    int(ax): DimPlan([int(i) for i in dp["kept"]], [int(g) for g in dp.get("groups", [])])
                    for ax, dp in t.get("dims", {}).items()
                }
                _check_tensor(name, shape, pruned_shape, dims)
                tensors[name] = TensorPlan(kind, shape, pruned_shape, dims, t.get("alias_of"))
            groups = {int(k): dict(v) for k, v in d.get("groups", {}).items()}
        except PlanError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PlanError(f"malformed plan: {describe(e)}") from None
        return cls(tensors, groups, dict(d.get("source", {})), list(d.get("unmapped", [])), int(version))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PlanError(f"cannot read plan {path}: {e}") from None
        return cls.from_dict(d)


def as_plan(plan: Plan | Mapping[str, Any] | str | os.PathLike[str]) -> Plan:
    """A Plan from a Plan, a parsed plan.json dict, or a path to plan.json."""
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, Mapping):
        return Plan.from_dict(plan)
    return Plan.load(plan)


def _check_tensor(
    name: str, shape: tuple[int, ...], pruned_shape: tuple[int, ...], dims: dict[int, DimPlan]
) -> None:
    if len(shape) != len(pruned_shape):
        raise PlanError(
            f"tensor {name!r}: shape {list(shape)} and pruned_shape {list(pruned_shape)} differ in rank"
        )
    for ax in range(len(shape)):
        dp = dims.get(ax)
        want = len(dp.kept) if dp is not None else shape[ax]
        if pruned_shape[ax] != want:
            raise PlanError(
                f"tensor {name!r}: pruned_shape[{ax}]={pruned_shape[ax]} but {want} indices are kept"
            )
        if (
            dp is not None
            and dp.kept
            and (
                min(dp.kept) < 0
                or max(dp.kept) >= shape[ax]
                or any(b <= a for a, b in zip(dp.kept, dp.kept[1:], strict=False))
            )
        ):
            raise PlanError(
                f"tensor {name!r}: kept indices of dim {ax} are not ascending within [0, {shape[ax]})"
            )
    extra = [ax for ax in dims if not 0 <= ax < len(shape)]
    if extra:
        raise PlanError(f"tensor {name!r}: dims {extra} out of range for rank {len(shape)}")


# ------------------------------------------------------------------------------ building


@dataclass
class OriginalTensor:
    """One entry of the original program's state: what the plan describes."""

    kind: str  # "parameter" | "buffer" | "constant"
    shape: tuple[int, ...]
    alias_of: str | None = None


@dataclass
class InitMapping:
    """An ONNX initializer of the analyzed graph that holds (part of) an original tensor.

    ``axes[a]`` is the original axis that ONNX axis ``a`` runs along (None: an axis the original does
    not have, e.g. the batch axis of a folded embedding lookup); ``axes=None`` means the same layout.
    A transposed weight has ``axes=(1, 0)``. ``whole=False``: the initializer holds only some rows of
    the original (``Gather(position_embeddings, const ids)`` folded into a constant), so it tells
    which columns the original loses but cannot stand in for it."""

    key: str
    axes: tuple[int | None, ...] | None = None
    whole: bool = True

    def axis(self, ax: int) -> int | None:
        return ax if self.axes is None else self.axes[ax]


def build_plan(
    an: Analysis,
    removed: np.ndarray,
    originals: Mapping[str, OriginalTensor],
    mapping: Mapping[str, InitMapping],
    *,
    source: dict[str, Any] | None = None,
    unmapped: list[dict[str, str]] | None = None,
) -> Plan:
    """The plan of a pruning result: ``mapping`` says which analyzed-graph initializer holds which
    original tensor. Several initializers may hold one tensor (copies made when un-sharing); they
    must agree (a partial one only on the dims it has). Raises PlanError when a tensor would be pruned
    two different ways."""
    removed = np.asarray(removed, dtype=bool)
    seen: dict[str, list[tuple[str, bool, dict[int, DimPlan]]]] = {}
    for init, m in mapping.items():
        dims: dict[int, DimPlan] = {}
        for ax, owner in an.param_owner.get(init, []):
            keep_mask = (owner < 0) | ~removed[np.maximum(owner, 0)]
            if keep_mask.all():
                continue
            orig_ax = m.axis(ax)
            if orig_ax is None or (not m.whole and orig_ax == 0):
                raise PlanError(
                    f"{m.key!r}: initializer {init!r} holds rows of it, and the rows are pruned; "
                    "this cannot be expressed on the original tensor"
                )
            gone = owner[~keep_mask]
            groups = sorted({int(x) for x in an.group_of[gone]})
            dims[orig_ax] = DimPlan(np.nonzero(keep_mask)[0].tolist(), groups)
        seen.setdefault(m.key, []).append((init, m.whole, dims))
    dims_of: dict[str, dict[int, DimPlan]] = {}
    for key, uses in seen.items():
        uses.sort(key=lambda u: not u[1])  # whole copies first: they see every axis
        first_init, _, merged = uses[0]
        for init, whole, dims in uses[1:]:
            ref = merged if whole else {a: d for a, d in merged.items() if a != 0}
            if {a: d.kept for a, d in ref.items()} != {a: d.kept for a, d in dims.items()}:
                raise PlanError(
                    f"parameter {key!r} is pruned differently where {first_init!r} and {init!r} "
                    "use it; a single PyTorch parameter cannot hold both"
                )
        dims_of[key] = merged

    tensors: dict[str, TensorPlan] = {}
    for key, orig in originals.items():
        dims = dims_of.get(orig.alias_of or key, {})
        pruned_shape = tuple(len(dims[ax].kept) if ax in dims else n for ax, n in enumerate(orig.shape))
        tensors[key] = TensorPlan(orig.kind, tuple(orig.shape), pruned_shape, dims, orig.alias_of)

    groups: dict[int, dict[str, Any]] = {}
    for grp in an.groups:
        n_removed = int(removed[grp.channels].sum())
        if n_removed:
            name = mapping[grp.name].key if grp.name in mapping else grp.name  # the user's name
            groups[grp.id] = {"name": name, "kept": grp.size - n_removed, "total": grp.size}
    return Plan(tensors, groups, dict(source or {}), list(unmapped or []))
