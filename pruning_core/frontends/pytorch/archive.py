"""Read a ``torch.export.save`` archive without running anything it holds.

``torch.export.load`` is not safe on an uploaded file: it unpickles sample inputs, pickled weights and
constants with ``weights_only=False`` (a pickle's ``__reduce__`` runs any function), ``pickle.loads``
opaque objects, hands ``expr_str`` strings of the program to ``sympy.sympify`` (an ``eval``), resolves
node targets by walking attributes from ``torch`` (``torch.serialization.os.system`` is a target), and
``exec``s the program's ``guards_code`` when the module is built. So this module does the loading
itself and hands torch's deserializer only checked, already-loaded parts:

- the program JSON is checked first: node targets and operator arguments from an allow-list of op
  namespaces (no dunder segments), symbolic expressions only of numbers, operators, size symbols and
  a few sympy function names, ``guards_code`` and node metadata (stack traces, ``source_fn_stack``
  lookups, ``from_node``) dropped: nothing in it is needed to prune;
- raw tensor payloads (the default for weights and constants) are read as bytes into tensors;
- anything pickled (sample inputs, pickled weights / constants) goes through torch's restricted
  ``weights_only`` unpickler, which builds tensors and plain containers and nothing else;
- custom (TorchBind) and opaque objects, AOTInductor binaries and the legacy pickle layouts are
  refused with a sentence that names the member.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from pruning_core.errors import ModelLoadError
from pruning_core.frontends.zipsafe import UnsafeZip, check_zip
from pruning_core.ir import limits

__all__ = ["load_exported_program"]

MODEL = "model"
MAX_JSON_BYTES = 512 * 1024**2  # the program's own description, not its weights

# Node targets and operator arguments the deserializer may resolve (by getattr from torch / operator /
# math). Op namespaces resolve only registered ops; Python-level callables are listed one by one.
_OP_TARGET = re.compile(r"^torch\.ops\.(aten|prims|higher_order)\.([A-Za-z_][A-Za-z0-9_]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?$")
_PY_TARGETS = frozenset(
    [f"_operator.{n}" for n in (
        "getitem add sub mul truediv floordiv mod pow neg pos abs eq ne lt le gt ge and_ or_ xor "
        "not_ invert lshift rshift truth index"
    ).split()]
    + [f"torch.{n}" for n in "sym_int sym_float sym_max sym_min sym_not sym_ite sym_sum sym_sqrt _assert".split()]
    + [f"math.{n}" for n in "ceil floor trunc sqrt".split()]
    + ["torch._C._set_grad_enabled"]
)
# Symbolic sizes, in sympy's srepr form ("Mul(Integer(3), Symbol('s17', positive=True, integer=True))"):
# sympify evals them, so only these tokens may appear: numbers, operators, quoted size-symbol names and
# the names below — no attribute access, other strings, brackets or subscripts.
_SYM_TOKEN = re.compile(
    r"\s*(?:(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(\*\*|//|[-+*/%(),<>=!&|~^])"
    r"|'([a-z]{1,4}\d+)'|\"([a-z]{1,4}\d+)\")"
)
_SYM_NAME = re.compile(r"^[a-z]{1,4}\d+$")
_SYM_FUNCTIONS = frozenset(
    "FloorDiv ModularIndexing Where PythonMod Mod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift "
    "PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat "
    "TruncToInt RoundToInt RoundDecimal ToFloat Identity OpaqueUnaryFn_sqrt Max Min Abs Eq Ne Lt Le Gt Ge "
    "And Or Not Piecewise ITE oo zoo nan True False Integer Rational Float Symbol Mul Add Pow floor ceiling "
    "sqrt positive negative nonnegative nonpositive integer real finite zero nonzero even odd rational "
    "commutative extended_real extended_positive extended_nonnegative".split()
)
_ATTRIBUTE_PATHS = frozenset({"parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn"})
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")


def load_exported_program(path: Path) -> torch.export.ExportedProgram:
    """The ExportedProgram in ``path``; ModelLoadError with a sentence when it is not a plain program
    (see the module docstring for what is refused)."""
    name = path.name
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise ModelLoadError(f"{name} is not a PyTorch archive (expected a torch.export.save .pt2 file)") from None
    with zf:
        try:  # declared sizes bound what reading members can allocate (zipfile stops at them)
            check_zip(zf, max_unpacked=limits.max_unpacked_bytes())
        except UnsafeZip as e:
            raise ModelLoadError(f"{name}: {e}") from None
        archive = _Archive(zf, name)
        try:
            return archive.program()
        except ModelLoadError:
            raise
        except Exception as e:  # torch's deserializer fails anywhere on a tampered program
            raise ModelLoadError(f"{name} is not a loadable torch.export program ({_sentence(e)})") from None


class _Archive:
    def __init__(self, zf: zipfile.ZipFile, name: str) -> None:
        self.zf, self.name = zf, name
        names = zf.namelist()
        roots = [n[: -len("archive_format")] for n in names if n.endswith("archive_format")]
        if len(roots) != 1 or not all(n.startswith(roots[0]) for n in names):
            raise ModelLoadError(
                f"{name} is not a torch.export archive of this torch version (no single archive root); "
                "save it with torch.export.save(torch.export.export(model, example_inputs), 'model.pt2')"
            )
        self.root = roots[0]
        self.members = {n[len(self.root):]: n for n in names}
        if self._read("archive_format", 64).strip() != b"pt2":
            raise ModelLoadError(f"{name} is not a .pt2 archive (its archive_format is not 'pt2')")
        for rel in self.members:
            if rel.startswith("data/aotinductor/") or rel.endswith((".so", ".dll", ".dylib", ".cpp")):
                raise self._refuse(rel, "holds compiled code (AOTInductor)")
        for legacy in (f"data/weights/{MODEL}.pt", f"data/constants/{MODEL}.pt"):
            if legacy in self.members:
                raise self._refuse(legacy, "is a pickle of the legacy .pt2 layout; re-save the program "
                                           "with this torch version's torch.export.save")
        if f"models/{MODEL}.json" not in self.members:
            raise ModelLoadError(f"{name} holds no program (models/{MODEL}.json is missing)")

    def _refuse(self, rel: str, why: str) -> ModelLoadError:
        return ModelLoadError(f"{self.name}: member {self.root}{rel} {why}; it was not loaded")

    def _read(self, rel: str, limit: int | None = None) -> bytes:
        info = self.zf.getinfo(self.members[rel])
        if limit is not None and info.file_size > limit:
            raise self._refuse(rel, f"is larger than {limit} bytes")
        return self.zf.read(info)

    def program(self) -> torch.export.ExportedProgram:
        from torch._export.serde import schema
        from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

        rel = f"models/{MODEL}.json"
        try:
            doc = json.loads(self._read(rel, MAX_JSON_BYTES))
        except (ValueError, RecursionError):
            raise self._refuse(rel, "is not valid JSON") from None
        _check_program(doc, lambda why: self._refuse(rel, why))
        serialized = _dict_to_dataclass(schema.ExportedProgram, doc)
        state_dict = self._payloads("weights")
        constants = self._payloads("constants")
        example_inputs = self._sample_inputs()
        ep = ExportedProgramDeserializer(None).deserialize(serialized, state_dict, constants, example_inputs)
        ep._guards_code = []  # dropped by _check_program; never exec'd
        return ep

    def _payloads(self, kind: str) -> dict[str, torch.Tensor]:
        """Weights or constants by their fully qualified names, aliases kept (one flat tensor per file)."""
        from torch._export.serde import schema
        from torch._export.serde.serialize import _dict_to_dataclass

        config_rel = f"data/{kind}/{MODEL}_{kind}_config.json"
        if config_rel not in self.members:
            raise ModelLoadError(f"{self.name} is not a complete .pt2 archive ({config_rel} is missing)")
        try:
            config = _dict_to_dataclass(schema.PayloadConfig, json.loads(self._read(config_rel, MAX_JSON_BYTES)))
        except Exception:
            raise self._refuse(config_rel, "is not a valid payload description") from None
        flat: dict[str, torch.Tensor] = {}
        out: dict[str, torch.Tensor] = {}
        for fqn, meta in config.config.items():
            _check_attribute_path(fqn, lambda why: self._refuse(config_rel, why))
            if not _FILE_NAME.match(meta.path_name):
                raise self._refuse(config_rel, f"names an unsafe payload file {meta.path_name!r}")
            rel = f"data/{kind}/{meta.path_name}"
            if rel not in self.members:
                raise ModelLoadError(f"{self.name} is not a complete .pt2 archive ({rel} is missing)")
            if kind == "constants" and not meta.path_name.startswith("tensor_"):
                raise self._refuse(rel, "is a custom (TorchBind or opaque) object, whose loading runs code")
            if meta.use_pickle:
                value = self._restricted(rel, want=torch.Tensor)
            else:
                value = self._raw(rel, meta.tensor_meta, flat)
            if kind == "weights" and meta.is_param:
                requires_grad = bool(meta.tensor_meta.requires_grad) if meta.tensor_meta else True
                value = torch.nn.Parameter(value, requires_grad=requires_grad)
            out[fqn] = value
        return out

    def _raw(self, rel: str, tensor_meta: Any, flat: dict[str, torch.Tensor]) -> torch.Tensor:
        from torch._export.serde.serialize import (
            deserialize_scalar_type,
            deserialize_size,
            deserialize_storage_offset,
            deserialize_stride,
        )

        if tensor_meta is None:
            raise self._refuse(rel, "has no tensor description")
        dtype = deserialize_scalar_type(tensor_meta.dtype)
        if rel not in flat:
            data = bytearray(self._read(rel))
            size = torch._utils._element_size(dtype)
            if len(data) % size:
                raise self._refuse(rel, f"holds {len(data)} bytes, not a whole number of {dtype} elements")
            flat[rel] = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        base = flat[rel]
        shape = deserialize_size(tensor_meta.sizes)
        stride = deserialize_stride(tensor_meta.strides)
        offset = deserialize_storage_offset(tensor_meta.storage_offset)
        if base.numel() == 0:
            return torch.zeros(shape, dtype=dtype)
        last = offset + sum((s - 1) * st for s, st in zip(shape, stride, strict=True) if s > 0)
        if any(s < 0 for s in shape) or any(st < 0 for st in stride) or offset < 0 or last >= base.numel():
            raise self._refuse(rel, "declares a shape larger than its data")
        return torch.as_strided(base, shape, stride, offset)

    def _restricted(self, rel: str, want: type | tuple[type, ...]) -> Any:
        """A pickled member through torch's weights_only unpickler: tensors and containers only."""
        try:
            value = torch.load(io.BytesIO(self._read(rel)), weights_only=True, map_location="cpu")
        except Exception:
            raise self._refuse(rel, "is a pickle that needs more than plain tensors to load") from None
        if not isinstance(value, want):
            raise self._refuse(rel, f"holds a {type(value).__name__} where tensors were expected")
        return value

    def _sample_inputs(self) -> tuple[Any, ...] | dict[str, Any] | None:
        rel = f"data/sample_inputs/{MODEL}.pt"
        if rel not in self.members:
            return None
        return self._restricted(rel, want=(tuple, dict))


# ------------------------------------------------------------------------------ program checks


def _check_program(doc: Any, refuse: Any) -> None:
    """Refuse what the deserializer would resolve or evaluate beyond tensors and registered ops; drop
    guards and node metadata (not needed to prune, and evaluated or looked up by torch)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("graph_module"), dict):
        raise refuse("does not describe an exported program")
    guards = doc.get("guards_code") or []
    if not isinstance(guards, list):
        raise refuse("has malformed guards")
    doc["guards_code"] = []  # source code that torch exec()s when the module is built
    for key in doc.get("range_constraints") or {}:
        _check_expr(key, refuse)
    doc["graph_module"]["metadata"] = {}
    for node in _walk(doc):
        if "target" in node and "inputs" in node and "outputs" in node:  # a graph node
            _check_target(node["target"], refuse)
            node["metadata"] = {}  # stack traces, source_fn_stack (looked up by name), from_node
        if "as_operator" in node:
            _check_target(node["as_operator"], refuse)
        if "expr_str" in node:
            _check_expr(node["expr_str"], refuse)
        for key in _ATTRIBUTE_PATHS.intersection(node):
            _check_attribute_path(node[key], refuse)


def _check_attribute_path(path: Any, refuse: Any) -> None:
    """Parameter / buffer / submodule paths become getattr / setattr chains on the rebuilt module."""
    if not isinstance(path, str) or any(part.startswith("__") for part in path.split(".")):
        raise refuse(f"names a module attribute {str(path)[:120]!r} that is not a parameter path")


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            yield v
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _check_target(target: Any, refuse: Any) -> None:
    if isinstance(target, str) and (target in _PY_TARGETS or _is_registered_op(target)):
        return
    raise refuse(f"calls {str(target)[:120]!r}, which is not a registered PyTorch operator")


def _is_registered_op(target: str) -> bool:
    """``torch.ops.<ns>.<op>[.<overload>]`` naming a registered op (lookups only; ``__class__`` and
    other attributes of the namespace objects resolve to something else and are refused)."""
    m = _OP_TARGET.match(target)
    if m is None:
        return False
    ns, op, overload = m.groups()
    try:
        obj = getattr(getattr(torch.ops, ns), op)
        if overload is not None:
            obj = getattr(obj, overload)
    except (AttributeError, RuntimeError):
        return False
    return isinstance(obj, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator))


def _check_expr(expr: Any, refuse: Any) -> None:
    if not isinstance(expr, str) or len(expr) > 4096:
        raise refuse("has a malformed symbolic size")
    pos = 0
    while pos < len(expr):
        m = _SYM_TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            if expr[pos:].strip() == "":
                break
            raise refuse(f"has a symbolic size that is not an expression of sizes: {expr[:120]!r}")
        ident = m.group(2)
        if ident is not None and not (_SYM_NAME.match(ident) or ident in _SYM_FUNCTIONS):
            raise refuse(f"has a symbolic size that is not an expression of sizes: {expr[:120]!r}")
        pos = m.end()


def _sentence(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else "it could not be read"


def is_pt2(names: list[str]) -> bool:
    """A torch.export archive: ``<root>/archive_format`` (this layout) or the 2.7-era ``version``."""
    return any(PurePosixPath(n).name == "archive_format" for n in names)
