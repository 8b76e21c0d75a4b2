"""PyTorch frontend: ``.pt2`` programs in; ``pruned.pt2`` and ``plan.json`` out.

In: a ``torch.export.save`` archive is read by ``pt2_archive`` (a program: only ever in the worker's
sandbox or the local CLI, never in the API process) and converted to ONNX with the dynamo exporter,
*unoptimized*: the exporter's optimizer fuses BatchNorm into Conv and deduplicates equal constants,
both of which destroy the link between initializers and the user's parameter names. We fold only
what does not read a parameter (shape chains, the zero bias of a bias-free conv), so initializer names
stay the state-dict keys (``conv1.weight``). The core may still rename a small weight (it folds
``Transpose(W)`` or a position-table lookup below a size limit) or copy a shared vector
(``<name>__<k>``); ``map_initializers`` maps every initializer back to its state-dict key by name and
then by value (transposed, or rows of a table) and verifies values, so nothing is mapped on a name
alone. What cannot be traced is listed in the plan's ``unmapped``.

Out (the artifact hook, called by ``api.prune`` after surgery):
- ``plan.json`` (``pruning_core.plan``): kept indices per dim of every original parameter / buffer;
- ``pruned.pt2``: ``torch.export`` of :class:`PrunedProgram`, the torch twin of the pruned graph whose
  parameters sit at the original attribute paths, so the state dict keeps the original names with
  their new shapes; checked against ``pruned.onnx`` (onnxruntime) before it is written. Like
  ``pruned.onnx`` it is specialized to the static input shapes the core pruned with (batch 1 unless
  ``input_shapes`` says otherwise); ``apply_plan`` on the user's module is the shape-generic way.

Uploads are programs from strangers: ``pt2_archive`` reads them without running their pickles or
code. TorchScript archives (loading one runs the archive's own code) and pickled checkpoints
(``torch.save``: no graph, and unpickling runs arbitrary code) are refused with a sentence.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import logging
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from pruning_core.errors import ModelLoadError, PruneError
from pruning_core.frontends import Source
from pruning_core.frontends.pt2_archive import is_pt2, load_exported_program
from pruning_core.plan import InitMapping, OriginalTensor, Plan, build_plan
from pruning_core.twin.executor import OnnxTwin

__all__ = ["PT2ExportError", "PrunedProgram", "load_program", "map_initializers", "open_pt2", "to_onnx"]

OPSET = 18
TOLERANCE = 1e-4  # pruned.pt2 vs pruned.onnx, relative to the output scale
_COPY_SUFFIX = re.compile(r"__\d+$")  # graph.load's un-shared copies of 1-D initializers

log = logging.getLogger(__name__)


class PT2ExportError(PruneError):
    """The pruned graph could not be turned back into a loadable ExportedProgram."""

    code = "pt2_export_failed"


# ------------------------------------------------------------------------------------ loading


def load_program(path: Path) -> torch.export.ExportedProgram:
    """The ExportedProgram in ``path``, read by ``pt2_archive`` (no pickle beyond plain tensors, no
    code of the archive run); ModelLoadError with the reason otherwise (the worker marks the model
    invalid from it)."""
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path.name} is not a PyTorch archive (expected a torch.export.save .pt2 file)")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if is_pt2(names):
        with _quiet():
            return load_exported_program(path)
    if any(n.endswith("/code/") or "/code/__torch__" in n for n in names):
        raise ModelLoadError(
            f"{path.name} is a TorchScript archive: loading one unpickles its data and runs its code, so "
            "it is refused; save the model with torch.export.save(torch.export.export(model, "
            "example_inputs), 'model.pt2')"
        )
    if any("serialized_exported_program" in n for n in names):
        raise ModelLoadError(
            f"{path.name} is a .pt2 of an older torch (its state is pickled) and is refused; re-save it "
            "with torch.export.save in torch 2.13"
        )
    raise ModelLoadError(
        f"{path.name} is a pickled checkpoint (torch.save), not a program: it holds no graph "
        "and cannot be loaded safely; save the model with torch.export.save(torch.export.export("
        "model, example_inputs), 'model.pt2')"
    )


# ------------------------------------------------------------------------------- originals


@dataclass
class Originals:
    """The original program's state: kinds/shapes (for the plan) and values (to map and keep)."""

    tensors: dict[str, OriginalTensor]
    values: dict[str, torch.Tensor]
    single_output: bool
    file: str

    @classmethod
    def of(cls, ep: torch.export.ExportedProgram, file: str) -> Originals:
        from torch.export.graph_signature import InputKind

        kinds: dict[str, str] = {}
        for spec in ep.graph_signature.input_specs:
            if spec.target is None:
                continue
            if spec.kind == InputKind.PARAMETER:
                kinds[spec.target] = "parameter"
            elif spec.kind == InputKind.BUFFER:
                kinds[spec.target] = "buffer" if spec.persistent is not False else "constant"
            elif spec.kind == InputKind.CONSTANT_TENSOR:
                kinds[spec.target] = "constant"
        values: dict[str, torch.Tensor] = {}
        for k, v in list(ep.state_dict.items()) + list(ep.constants.items()):
            if isinstance(v, torch.Tensor):
                values[k] = v.detach()
                # buffers the graph never reads (num_batches_tracked) have no input spec
                kinds.setdefault(k, "parameter" if isinstance(v, nn.Parameter) else "buffer")
        tensors: dict[str, OriginalTensor] = {}
        first_of: dict[tuple, str] = {}
        for k, v in values.items():
            # tied weights (GPT-2's lm_head = wte) are one tensor under two names: one entry, one alias
            ident = (
                v.untyped_storage().data_ptr(),
                v.storage_offset(),
                tuple(v.shape),
                tuple(v.stride()),
                v.dtype,
            )
            alias = first_of.setdefault(ident, k) if v.numel() else k
            tensors[k] = OriginalTensor(kinds[k], tuple(v.shape), alias if alias != k else None)
        single = len(ep.graph_signature.user_outputs) == 1
        return cls(tensors, values, single, file)


# ---------------------------------------------------------------------------------- to ONNX


def to_onnx(ep: torch.export.ExportedProgram, path: Path, input_names: list[str] | None = None) -> None:
    """Convert with the dynamo exporter, keep parameter names: see the module docstring."""
    n_out = len(ep.graph_signature.user_outputs)
    try:
        with _quiet():
            prog = torch.onnx.export(
                ep,
                (),
                dynamo=True,
                optimize=False,
                opset_version=OPSET,
                verbose=False,
                input_names=input_names,
                output_names=[f"output_{i}" for i in range(n_out)] if n_out > 1 else ["output"],
            )
    except Exception as e:
        raise ModelLoadError(f"the PyTorch program cannot be converted to ONNX ({_first_line(e)})") from None
    assert prog is not None
    model = prog.model
    named = {v.name for v in model.graph.initializers.values()}

    def should_fold(node: Any) -> bool | None:
        # folding a node that reads a parameter would replace it by an anonymous constant
        if node.op_type in ("Shape", "Size"):
            return None
        if any(v is not None and v.name in named for v in node.inputs):
            return False
        return None

    from onnx_ir.passes.common import RemoveUnusedNodesPass
    from onnxscript.optimizer import fold_constants_ir

    with _quiet():
        fold_constants_ir(
            model,
            onnx_shape_inference=True,
            input_size_limit=1 << 20,
            output_size_limit=1 << 22,
            should_fold=should_fold,
        )
        RemoveUnusedNodesPass()(model)
        prog.save(str(path))


# ----------------------------------------------------------------------------- name mapping


def _np(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def map_initializers(
    inits: Mapping[str, np.ndarray], originals: Originals
) -> tuple[dict[str, InitMapping], list[dict[str, str]]]:
    """Which original tensor each initializer of the analyzed graph holds.

    By name (``conv1.weight``, or a ``conv1.bias__2`` copy), then by value for renamed ones: a folded
    ``Transpose(W)`` is matched against ``W.T``, a folded embedding lookup with constant ids
    (``position_embeddings[:16]``, possibly permuted) row by row. Every match is verified by value.
    Tensors whose elements are all equal (zero biases, LayerNorm ones of a fresh model) are not
    matched as whole tensors: they are indistinguishable; a folded lookup of an all-equal table is,
    when a single original fits. Keys are canonical (a tied weight maps to its first name).
    Returns (mapping, notes on what could not be mapped).
    """
    values = {k: _np(v) for k, v in originals.values.items()}

    def canon(k: str) -> str:
        return originals.tensors[k].alias_of or k

    by_value: dict[tuple[tuple[int, ...], str], list[tuple[str, tuple[int, ...] | None]]] = {}

    def value_index() -> dict[tuple[tuple[int, ...], str], list[tuple[str, tuple[int, ...] | None]]]:
        # hashing every weight costs a pass over the model: only when a name did not match
        if not by_value:
            for k, a in values.items():
                if a.dtype.kind != "f" or a.size < 2 or _constant(a):
                    continue
                by_value.setdefault((a.shape, _digest(a)), []).append((k, None))
                if a.ndim == 2:
                    by_value.setdefault((a.T.shape, _digest(a.T)), []).append((k, (1, 0)))
        return by_value

    rows = _RowIndex(values)
    mapping: dict[str, InitMapping] = {}
    notes: list[dict[str, str]] = []
    for name, arr in inits.items():
        for key in (name, _COPY_SUFFIX.sub("", name)):
            if key in values:
                want = values[key]
                if want.shape == arr.shape and np.array_equal(want, _as(arr, want.dtype), equal_nan=True):
                    mapping[name] = InitMapping(canon(key))
                else:
                    notes.append(
                        {
                            "tensor": key,
                            "reason": f"ONNX initializer {name!r} has the name but not the "
                            "values of this tensor; not mapped",
                        }
                    )
                break
        else:
            if arr.dtype.kind != "f" or arr.size < 2:
                continue
            if _constant(arr):  # indistinguishable by value; only a folded lookup can be traced
                hit = rows.find(arr) if arr.ndim >= 2 else None
                if hit is not None:
                    mapping[name] = InitMapping(canon(hit[0]), hit[1], whole=False)
                continue
            cands = value_index().get((arr.shape, _digest(arr)), [])
            cands = [
                (k, p)
                for k, p in cands
                if np.array_equal(values[k] if p is None else values[k].transpose(p), arr)
            ]
            keys = {canon(k) for k, _ in cands}
            if len(keys) == 1:
                k, p = cands[0]
                mapping[name] = InitMapping(canon(k), p)
            elif len(keys) > 1:
                notes.append({"tensor": name, "reason": f"equal values in {sorted(keys)}: cannot tell which"})
            else:
                hit = rows.find(arr)
                if hit is not None:
                    mapping[name] = InitMapping(canon(hit[0]), hit[1], whole=False)
    return mapping, notes


class _RowIndex:
    """Finds the original whose rows (axis 0) make up a constant: a folded ``Gather`` along axis 0
    with constant indices (position embeddings), possibly permuted afterwards (Swin's relative
    position bias, ``table[index].view(N, N, heads).permute(2, 0, 1)``). Row hashes are built lazily."""

    MAX_RANK = 4  # permutations tried: at most 4! = 24

    def __init__(self, values: Mapping[str, np.ndarray]) -> None:
        self.values = values
        self._index: dict[str, set[str]] = {}

    def find(self, arr: np.ndarray) -> tuple[str, tuple[int | None, ...]] | None:
        """(original key, ``axes`` for InitMapping) or None when no original / several fit."""
        if arr.ndim > self.MAX_RANK:
            return None
        # An all-equal constant (a zero-initialized table of an untrained model) matches any
        # all-equal original of a fitting shape: accept it only with a row axis, and only when a
        # single original fits (ambiguity is checked below).
        uniform = _constant(arr)
        found: tuple[str, tuple[int | None, ...]] | None = None
        for key, a in self.values.items():
            if a.ndim < 2 or a.dtype != arr.dtype or a.ndim > arr.ndim + (0 if uniform else 1):
                continue
            tail = a.ndim - 1
            for perm in itertools.permutations(range(arr.ndim)):
                p_arr = arr.transpose(perm)
                if p_arr.shape[arr.ndim - tail :] != a.shape[1:]:
                    continue
                rows = self._rows(key, a)
                if not all(_digest(r) in rows for r in p_arr.reshape((-1, *a.shape[1:]))):
                    continue
                lead = arr.ndim - tail
                axes: list[int | None] = [None] * arr.ndim
                for j, src in enumerate(perm):  # permuted axis j is arr axis src
                    axes[src] = j - lead + 1 if j >= lead else (0 if j == lead - 1 else None)
                if found is not None and found[0] != key:
                    return None  # rows of two originals: ambiguous
                found = (key, tuple(axes))
                break
        return found

    def _rows(self, key: str, a: np.ndarray) -> set[str]:
        if key not in self._index:
            self._index[key] = {_digest(r) for r in a}
        return self._index[key]


def _as(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``a`` in the original's dtype for comparison (bfloat16 weights are compared as float32)."""
    try:
        return a.astype(dtype, copy=False)
    except (TypeError, ValueError):
        return a


def _constant(a: np.ndarray) -> bool:
    flat = a.reshape(-1)
    return bool(flat.size == 0 or (flat == flat[0]).all())


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
    ONNX model is; a real result that meets a traced tensor is lifted as a constant by the exporter."""

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
        with _quiet(), _EagerConstants():
            return torch.export.export(module, args, strict=False)
    except Exception as e:
        raise PT2ExportError(f"cannot export the pruned graph as an ExportedProgram: {_first_line(e)}") from e


# -------------------------------------------------------------------------------- the hook


class ArtifactWriter:
    """``Source.artifacts``: writes ``plan.json`` and ``pruned.pt2`` for a PyTorch source.

    Both are written for every PyTorch job whatever ``spec.outputs`` says: they are small, and a
    PyTorch user needs them to use the result in their own code."""

    def __init__(self, originals: Originals) -> None:
        self.originals = originals

    def __call__(
        self, an: Any, removed: np.ndarray, pruned: onnx.ModelProto, out_dir: Path, spec: Any
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

        inputs = data_mod.synthetic_inputs(an.graph, seed=getattr(spec, "seed", 0))
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

    with _quiet():
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


# ----------------------------------------------------------------------------------- entry


def open_pt2(path: Path, workdir: Path) -> Source:
    """Load a PyTorch program, convert it to ONNX in ``workdir``; the Source's hook writes the
    PyTorch artifacts after pruning."""
    path = Path(path)
    ep = load_program(path)
    originals = Originals.of(ep, path.name)
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = workdir / f"{path.stem}.onnx"
    to_onnx(ep, onnx_path)
    return Source(onnx_path, "pytorch", path, ArtifactWriter(originals))


# ---------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.export / torch.onnx print progress and warnings to stdout; the worker's log is not
    the place for them (failures are raised, with their first line)."""
    buf = io.StringIO()
    # "torchvision is not installed", "dimension ... specialized": progress notes, not problems
    noisy = [logging.getLogger(n) for n in ("torch.onnx._internal.exporter._registration", "torch._export")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"
