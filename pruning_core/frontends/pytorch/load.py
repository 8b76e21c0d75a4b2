"""PyTorch in: a ``.pt2`` program -> the ONNX file the core prunes, and the original state.

A ``torch.export.save`` archive is read by :mod:`~pruning_core.frontends.pytorch.archive` (a program:
only ever in the worker's sandbox or the local CLI, never in the API process) and converted to ONNX
with the dynamo exporter, *unoptimized*: the exporter's optimizer fuses BatchNorm into Conv and
deduplicates equal constants, both of which destroy the link between initializers and the user's
parameter names. We fold only what does not read a parameter (shape chains, the zero bias of a
bias-free conv), so initializer names stay the state-dict keys (``conv1.weight``). The core may still
rename a small weight (it folds ``Transpose(W)`` or a position-table lookup below a size limit) or copy
a shared vector (``<name>__<k>``); ``map_initializers`` maps every initializer back to its state-dict
key by name and then by value (transposed, or rows of a table) and verifies values, so nothing is
mapped on a name alone. What cannot be traced is listed in the plan's ``unmapped``.
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
import torch
from torch import nn

from pruning_core.errors import ModelLoadError
from pruning_core.frontends.pytorch.archive import is_pt2, load_exported_program
from pruning_core.plan import InitMapping, OriginalTensor

OPSET = 18
_COPY_SUFFIX = re.compile(r"__\d+$")  # graph.load's un-shared copies of 1-D initializers

# ------------------------------------------------------------------------------------ loading


def load_program(path: Path) -> torch.export.ExportedProgram:
    """The ExportedProgram in ``path``, read by ``archive`` (no pickle beyond plain tensors, no
    code of the archive run); ModelLoadError with the reason otherwise (the worker marks the model
    invalid from it)."""
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path.name} is not a PyTorch archive (expected a torch.export.save .pt2 file)")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if is_pt2(names):
        with quiet():
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
        with quiet():
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
        raise ModelLoadError(f"the PyTorch program cannot be converted to ONNX ({first_line(e)})") from None
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

    with quiet():
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


# ---------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def quiet() -> Iterator[None]:
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


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, for a sentence shown to the user (not the exception's
    class: the user did not write the code that raised it)."""
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else "no reason given"
