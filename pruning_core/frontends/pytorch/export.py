"""PyTorch out: the artifacts of a pruned PyTorch program (the hook ``api.prune`` calls after surgery).

- ``plan.json`` (``pruning_core.plan``): kept indices per dim of every original parameter / buffer;
- ``pruned.pt2``: ``torch.export`` of :class:`PrunedProgram`, the torch twin of the pruned graph whose
  parameters sit at the original attribute paths, so the state dict keeps the original names with
  their new shapes; checked against ``pruned.onnx`` (onnxruntime) before it is written. It is
  specialized to the static input shapes the core pruned with (batch 1 unless ``input_shapes`` says
  otherwise; the twin is built from the pruned graph before ``ir.signature`` gives ``pruned.onnx``
  its dynamic dims back); ``apply_plan`` on the user's module is the shape-generic way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from pruning_core.errors import PruneError
from pruning_core.frontends.pytorch.load import Originals, first_line, map_initializers, quiet
from pruning_core.plan import InitMapping, OriginalTensor, Plan, build_plan
from pruning_core.spec import PruneSpec
from pruning_core.twin.executor import OnnxTwin

TOLERANCE = 1e-4  # pruned.pt2 vs pruned.onnx, relative to the output scale

log = logging.getLogger(__name__)


class PT2ExportError(PruneError):
    """The pruned graph could not be turned back into a loadable ExportedProgram."""

    code = "pt2_export_failed"


# -------------------------------------------------------------------------- pruned program


class PrunedProgram(OnnxTwin):
    """The torch twin of the pruned graph, with the user's parameters at their original paths.

    ``state_dict()`` is keyed by the original names (``model.conv1.weight``) holding the pruned
    values in the original layout; every other initializer of the graph (folded shapes, the zero bias
    of a bias-free conv) becomes a plain tensor attribute, which ``torch.export`` lifts as a constant
    outside the state dict. Originals the graph does not read (``num_batches_tracked``) are kept as
    they were, so ``load_state_dict`` into the user's pruned module is complete.
    """

    def __init__(
        self, model: onnx.ModelProto, mapping: Mapping[str, InitMapping], originals: Originals, plan: Plan
    ) -> None:
        super().__init__(model)
        self._routes: dict[str, tuple[str, tuple[int, ...] | None]] = {}
        self._single = originals.single_output
        self.notes: list[dict[str, str]] = []
        placed: dict[str, torch.Tensor] = {}  # original key -> registered tensor (original layout)
        for table in (self.param_names, self.buffer_names):
            for onnx_name, attr in list(table.items()):
                value = self._parameters.pop(attr, None)
                if value is None:
                    value = self._buffers.pop(attr)
                value = value.detach()
                m = mapping.get(onnx_name)
                key = m.key if m is not None and m.whole else None  # partial copies stay constants
                perm = None
                if m is not None and key is not None:
                    if m.axes is not None:
                        perm = tuple(int(a) for a in m.axes if a is not None)
                        natural = value.permute(tuple(int(i) for i in np.argsort(perm))).contiguous()
                    else:
                        natural = value
                    if key in placed and not torch.equal(placed[key], natural):
                        # e.g. compensation changed one copy of a shared vector: keep it private
                        self.notes.append(
                            {
                                "tensor": key,
                                "reason": f"initializer {onnx_name!r} no longer equals "
                                "the parameter; kept as a constant of pruned.pt2",
                            }
                        )
                        key = None
                    elif key not in placed:
                        placed[key] = self._place(key, natural, originals.tensors[key], plan)
                if key is None:
                    setattr(self, attr, value)  # a plain attribute: lifted as a constant by torch.export
                    continue
                self._routes[onnx_name] = (key, perm)
                table[onnx_name] = "@" + onnx_name
        # Constant nodes the twin evaluated into buffers: plain attributes too (see above).
        for attr in getattr(self, "_const_names", {}).values():
            if attr in self._buffers:
                setattr(self, attr, self._buffers.pop(attr))
        for key, orig in originals.tensors.items():
            if key in placed:
                continue
            target = orig.alias_of
            if target is not None and target in placed:
                self._register(key, placed[target], orig.kind)  # the same Parameter: ties survive
                placed[key] = placed[target]
                continue
            # Not read whole by the graph (num_batches_tracked; position embeddings whose lookup was
            # folded): the original values, cut as the plan says.
            value = originals.values[key].clone()
            for ax, dp in sorted(plan.tensors[key].dims.items()):
                value = value.index_select(ax, torch.tensor(dp.kept, dtype=torch.long))
            placed[key] = self._place(key, value.contiguous(), orig, plan)

    def _place(self, key: str, value: torch.Tensor, orig: OriginalTensor, plan: Plan) -> torch.Tensor:
        want = tuple(plan.tensors[key].pruned_shape)
        if tuple(value.shape) != want:
            raise PT2ExportError(
                f"{key!r}: the pruned graph holds shape {tuple(value.shape)}, the plan says {want}"
            )
        if orig.kind == "parameter":
            value = nn.Parameter(value, requires_grad=value.is_floating_point())
        self._register(key, value, orig.kind)
        return value

    def _register(self, key: str, value: torch.Tensor, kind: str) -> None:
        *path, leaf = key.split(".")
        mod: nn.Module = self
        for part in path:
            child = mod._modules.get(part)
            if child is None:
                if hasattr(mod, part):
                    raise PT2ExportError(
                        f"cannot place {key!r}: {part!r} is taken by the twin's own attributes"
                    )
                child = nn.Module()
                mod.add_module(part, child)
            mod = child
        if hasattr(mod, leaf) and leaf not in mod._parameters and leaf not in mod._buffers:
            raise PT2ExportError(f"cannot place {key!r}: {leaf!r} is taken by the twin's own attributes")
        if isinstance(value, nn.Parameter):
            mod._parameters[leaf] = value
        else:
            mod.register_buffer(leaf, value, persistent=kind == "buffer")

    def __getattr__(self, name: str) -> Any:
        # The twin reads initializers with getattr(self, param_names[onnx_name]); routed names
        # resolve to the original parameter, permuted back when the graph holds its transpose.
        if name.startswith("@"):
            routes = self.__dict__.get("_routes", {})
            if name[1:] in routes:
                key, perm = routes[name[1:]]
                *path, leaf = key.split(".")
                mod = self.get_submodule(".".join(path)) if path else self
                t = getattr(mod, leaf)
                return t.permute(perm) if perm is not None else t
        return super().__getattr__(name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outs = super().forward(*args, **kwargs)
        return outs[0] if self._single and len(outs) == 1 else outs


class _EagerConstants(torch.overrides.TorchFunctionMode):
    """Run every torch call whose tensors are all concrete eagerly, outside the fake mode.

    ``torch.export`` traces with fake tensors; an op that reads a value (``Reshape``'s shape, ``Pad``'s
    constant, ``TopK``'s k) needs it concrete. In the pruned graph those values are constants (plain
    tensor attributes of :class:`PrunedProgram`, never fakes), but the twin reads them through torch
    ops (``t.reshape(-1).tolist()``), and an op on a real tensor under the fake mode yields a fake with
    unknown values. Evaluating such calls for real (with the fake and tracing modes off) keeps the
    constant chain concrete, so the program is specialized to the pruned graph's static shapes, as the
    analysed graph is; a real result that meets a traced tensor is lifted as a constant by the exporter."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        from torch._subclasses.fake_tensor import is_fake
        from torch.utils._python_dispatch import _disable_current_modes
        from torch.utils._pytree import tree_leaves

        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        # fakes and functional wrappers are subclasses: a plain Tensor is concrete
        if tensors and all(
            type(t) is torch.Tensor or (type(t) is nn.Parameter and not is_fake(t)) for t in tensors
        ):
            with _disable_current_modes():  # neither faked nor recorded: a constant computed now
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def export_program(module: PrunedProgram, args: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    module.eval()
    try:
        with quiet(), _EagerConstants():
            return torch.export.export(module, args, strict=False)
    except Exception as e:
        raise PT2ExportError(f"cannot export the pruned graph as an ExportedProgram: {first_line(e)}") from e


# -------------------------------------------------------------------------------- the hook


class ArtifactWriter:
    """``Source.artifacts``: writes ``plan.json`` and ``pruned.pt2`` for a PyTorch source.

    Both are written for every PyTorch job: they are small, and a PyTorch user needs them to use the
    result in their own code."""

    def __init__(self, originals: Originals) -> None:
        self.originals = originals

    def __call__(
        self, an: Any, removed: np.ndarray, pruned: onnx.ModelProto, out_dir: Path, spec: PruneSpec
    ) -> dict[str, Path]:
        from pruning_core.runtime import data as data_mod

        out_dir = Path(out_dir)
        mapping, notes = map_initializers(an.graph.inits, self.originals)
        mapped = {m.key for m in mapping.values()}
        removed = np.asarray(removed, dtype=bool)
        for name, owners in an.param_owner.items():
            if name in mapping or not any(removed[o[o >= 0]].any() for _, o in owners):
                continue
            if name not in an.graph.original_inits:
                # the core folded it from other constants (a lookup of a table, say) and no original
                # could be traced to it: whatever it came from is not cut in the plan
                notes.append(
                    {
                        "tensor": name,
                        "reason": "a constant folded by the core loses channels, but no "
                        "original tensor could be traced to it; a parameter may be "
                        "missing from the plan",
                    }
                )
            elif _is_user_like(name):
                notes.append(
                    {
                        "tensor": name,
                        "reason": "graph initializer loses channels but matches no original tensor",
                    }
                )
        for key, orig in self.originals.tensors.items():
            if orig.kind == "parameter" and key not in mapped and (orig.alias_of or key) not in mapped:
                notes.append(
                    {
                        "tensor": key,
                        "reason": "not read by the exported graph (unused or folded); kept unchanged",
                    }
                )
        source = {"file": self.originals.file, "kind": "pytorch"}
        plan = build_plan(an, removed, self.originals.tensors, mapping, source=source, unmapped=notes)

        inputs = data_mod.synthetic_inputs(an.graph, seed=spec.seed)
        module = PrunedProgram(pruned, mapping, self.originals, plan)
        plan.unmapped.extend(module.notes)
        plan_path = plan.save(out_dir / "plan.json")
        for note in plan.unmapped:
            log.warning("plan: %s: %s", note["tensor"], note["reason"])

        args = tuple(torch.as_tensor(inputs[n]) for n in module.input_names)
        ep = export_program(module, args)
        _check_against_onnx(ep, out_dir / "pruned.onnx", pruned, inputs, module.input_names)
        pt2_path = out_dir / "pruned.pt2"
        torch.export.save(ep, str(pt2_path))
        return {"pruned.pt2": pt2_path, "plan.json": plan_path}


def _is_user_like(name: str) -> bool:
    # exporter-made constants are called val_12 / t_3 / zeros; user tensors have dotted paths
    return "." in name


def _check_against_onnx(
    ep: torch.export.ExportedProgram,
    onnx_path: Path,
    pruned: onnx.ModelProto,
    inputs: dict[str, np.ndarray],
    input_names: list[str],
) -> None:
    """The artifact must be what it claims: the program == pruned.onnx under onnxruntime (checked in
    memory; reloading the saved file would double the cost and test torch's serializer)."""
    import onnxruntime as ort

    with quiet():
        with torch.no_grad():
            got = ep.module()(*(torch.as_tensor(inputs[n]) for n in input_names))
    got_list = [got] if isinstance(got, torch.Tensor) else list(got)
    src: Any = str(onnx_path) if onnx_path.exists() else pruned.SerializeToString()
    want = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, inputs)
    for i, (g, w) in enumerate(zip(got_list, want, strict=True)):
        g_np = g.detach().float().numpy() if g.is_floating_point() else g.numpy()
        w = np.asarray(w)
        if g_np.shape != w.shape:
            raise PT2ExportError(f"pruned.pt2 output {i} has shape {g_np.shape}, pruned.onnx {w.shape}")
        if w.dtype.kind == "f":
            err = float(np.abs(g_np - w).max()) if w.size else 0.0
            scale = max(1.0, float(np.abs(w).max()) if w.size else 0.0)
            if not err <= TOLERANCE * scale:
                raise PT2ExportError(
                    f"pruned.pt2 output {i} differs from pruned.onnx by {err:.3g} "
                    f"(tolerance {TOLERANCE * scale:.3g})"
                )
        elif not np.array_equal(g_np, w):
            raise PT2ExportError(f"pruned.pt2 output {i} differs from pruned.onnx")
