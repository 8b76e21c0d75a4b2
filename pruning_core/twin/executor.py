"""The torch twin: an ``nn.Module`` that runs an ONNX graph with torch ops, differentiably.

It is the engine for everything that needs gradients or training on an ONNX model (gradient
criteria such as taylor/snip/grasp, AutoBot's learned gates, recovery by distillation): the user's
model arrives as ONNX, so instead of converting it back to framework code we interpret the graph.

- float initializers become ``nn.Parameter`` s (trainable), except the ones that are not weights:
  scalars, tensors holding non-finite values (attention masks) and tensors only used at
  non-differentiable input slots (BatchNormalization running stats, Resize scales, shapes...).
  Those, and integer initializers, become buffers. ``param_names`` / ``buffer_names`` map ONNX
  initializer names to module attribute names; ``state_dict_onnx()`` maps them back.
- ``forward(*inputs)`` / ``forward(**{onnx_input_name: tensor})`` returns the graph outputs, in
  graph-output order, as a tuple.
- ``run(inputs, capture=[...])`` also returns named intermediate tensors.
- ``set_gates({tensor_name: gate})`` multiplies a named tensor by ``gate`` (broadcast) whenever it
  is produced -- trainable channel gates and 0/1 masks -- or applies ``gate`` if it is a callable.

The twin always computes the graph's own (inference) semantics: BatchNormalization uses its running
statistics and Dropout passes values through, whatever ``.train()`` / ``.eval()`` says -- gradient
criteria and gate training must see the function the ONNX model computes.

Shapes are computed at run time (Shape/Gather/Concat chains execute like any op), so dynamic axes
such as the batch size stay dynamic; ``If`` picks its branch from the condition's value at run
time. Unsupported ops (Loop, Scan, other domains...) are reported when the twin is built.
The op implementations live in :mod:`pruning_core.twin.ops`; node checking, ordering and the
freeing plan in :mod:`pruning_core.twin.schedule`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from pruning_core.errors import DataError, ModelLoadError, UnsupportedOpError
from pruning_core.twin.ops import (
    OPS,
    Attrs,
    decode_attributes,
    tensor_from_proto,
    torch_dtype,
)
from pruning_core.twin.schedule import (
    DEFAULT_DOMAINS,
    Branch,
    Step,
    node_deps,
    node_label,
    opset_of,
    plan_frees,
    prepare,
    restore_fns,
    strip_fns,
    supported_ops,
    toposort,
    unsupported_nodes,
)

__all__ = ["OnnxTwin", "supported_ops", "unsupported_nodes"]

Tensor = torch.Tensor
Gate = Tensor | Callable[[Tensor], Tensor]

# Input slots whose values are never differentiated through: an initializer used only here is a
# constant (shape, index, statistic), not a weight, so it becomes a buffer rather than a Parameter.
_ALL = frozenset(range(16))
_NON_DIFF_SLOTS: dict[str, frozenset[int]] = {
    "BatchNormalization": frozenset({3, 4}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Pad": frozenset({1, 3}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Split": frozenset({1}),
    "TopK": frozenset({1}),
    "CumSum": frozenset({1}),
    "Trilu": frozenset({1}),
    "OneHot": frozenset({0, 1}),
    "Gather": frozenset({1}),
    "GatherElements": frozenset({1}),
    "GatherND": frozenset({1}),
    "ScatterND": frozenset({1}),
    "ScatterElements": frozenset({1}),
    "Where": frozenset({0}),
    "If": frozenset({0}),
    "Shape": _ALL,
    "Size": _ALL,
    "ConstantOfShape": _ALL,
    "Range": _ALL,
    "EyeLike": _ALL,
    "NonZero": _ALL,
    "ArgMax": _ALL,
    "ArgMin": _ALL,
    "Equal": _ALL,
    "Less": _ALL,
    "LessOrEqual": _ALL,
    "Greater": _ALL,
    "GreaterOrEqual": _ALL,
    "IsNaN": _ALL,
    "IsInf": _ALL,
    "Not": _ALL,
    "And": _ALL,
    "Or": _ALL,
    "Xor": _ALL,
}
for _r in (
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceSumSquare "
    "ReduceLogSum ReduceLogSumExp"
).split():
    _NON_DIFF_SLOTS[_r] = frozenset({1})

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)



def _sanitize(name: str) -> str:
    s = re.sub(r"\W", "_", name).strip("_") or "t"
    return f"t_{s}" if s[0].isdigit() else s


# Graphs whose ops the twin does not run but whose channels the analysis prunes: what to say
# instead of only naming the ops (the criteria below read weights or run onnxruntime).
WITHOUT_TWIN = {"QuantizeLinear": "a QDQ-quantized graph", "DequantizeLinear": "a QDQ-quantized graph",
                "LSTM": "a recurrent graph", "GRU": "a recurrent graph", "RNN": "a recurrent graph"}
NO_TWIN_CRITERIA = ("score it with a weight or activation criterion, l1, l2, fpgm, lamp, bn_scale, random or "
                    "obspa, without recovery; or prune the float model")


class OnnxTwin(nn.Module):
    """Runs an ONNX graph with torch ops; initializers are parameters/buffers of this module.

    Args:
        model: the ONNX model (shape inference is not required: shapes are computed at run time).
        trainable: optional override ``(onnx_name, array) -> bool`` deciding which float
            initializers become Parameters (default: see module docstring).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        trainable: Callable[[str, np.ndarray], bool] | None = None,
    ) -> None:
        super().__init__()
        model = prepare(model)
        bad = unsupported_nodes(model)
        if bad:
            listing = "; ".join(
                f"{op} (nodes: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                for op, names in sorted(bad.items())
            )
            kinds = sorted({WITHOUT_TWIN[op] for op in bad if op in WITHOUT_TWIN})
            hint = f" ({' and '.join(kinds)}: {NO_TWIN_CRITERIA})" if kinds else ""
            err = UnsupportedOpError(f"the torch twin cannot run {len(bad)} op type(s): {listing}{hint}")
            err.ops = dict(bad)  # type: ignore[attr-defined]
            raise err
        graph = model.graph
        opset = opset_of(model)
        self.opset = opset

        init_names = {t.name for t in graph.initializer}
        self.input_names: list[str] = [i.name for i in graph.input if i.name not in init_names]
        self.output_names: list[str] = [o.name for o in graph.output]
        self._input_dtypes: dict[str, torch.dtype | None] = {}
        for vi in graph.input:
            if vi.name in init_names:
                continue
            et = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
            self._input_dtypes[vi.name] = torch_dtype(et) if et else None

        # Which input slots each tensor feeds: decides Parameter vs buffer.
        uses: dict[str, list[tuple[str, int]]] = {}
        for node in graph.node:
            for k, name in enumerate(node.input):
                if name:
                    uses.setdefault(name, []).append((node.op_type, k))

        self.param_names: dict[str, str] = {}
        self.buffer_names: dict[str, str] = {}
        self._onnx_dtypes: dict[str, int] = {}
        for init in graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL and not init.raw_data:
                raise ModelLoadError(
                    f"initializer {init.name!r} has external data that was not loaded "
                    "(load the model with its external data first)"
                )
            try:
                value = tensor_from_proto(init)
            except TypeError as exc:  # string / float8 tensors: nothing torch can compute with
                raise UnsupportedOpError(f"initializer {init.name!r}: {exc}") from exc
            self._onnx_dtypes[init.name] = init.data_type
            attr = self._unique_attr(init.name)
            if self._is_trainable(init.name, value, uses.get(init.name, []), trainable):
                self.register_parameter(attr, nn.Parameter(value))
                self.param_names[init.name] = attr
            else:
                self.register_buffer(attr, value)
                self.buffer_names[init.name] = attr

        # Constant nodes are evaluated once; their values live in non-persistent buffers so that
        # .to(device) moves them while state_dict() keeps only the initializers.
        self._const_names: dict[str, str] = {}
        steps_nodes: list[onnx.NodeProto] = []
        # One list of node objects, so that id() keys stay valid (protobuf may re-wrap on access).
        nodes = list(graph.node)
        labels = {id(node): node_label(node, i) for i, node in enumerate(nodes)}
        for node in nodes:
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
                attrs = Attrs(
                    decode_attributes(node),
                    op_type="Constant",
                    opset=opset,
                    num_outputs=1,
                    node_name=labels[id(node)],
                )
                value = OPS["Constant"](attrs, [])
                assert isinstance(value, Tensor)
                attr = self._unique_attr("const_" + node.output[0])
                self.register_buffer(attr, value.clone(), persistent=False)
                self._const_names[node.output[0]] = attr
            else:
                steps_nodes.append(node)

        available = set(self.input_names) | init_names | set(self._const_names)
        self._steps: list[Step] = self._compile(steps_nodes, available, opset, labels)
        # Free intermediate values after their last use: keeps peak memory near onnxruntime's.
        plan_frees(self._steps, keep=set(self.output_names), freeable=None)

        self.tensor_names: frozenset[str] = frozenset(
            available | {o for s in self._steps for o in s.outputs if o}
        )
        self._gates: dict[str, Gate] = {}

    # ------------------------------------------------------------------ construction helpers

    def _compile(
        self, nodes: list[onnx.NodeProto], available: set[str], opset: int, labels: dict[int, str]
    ) -> list[Step]:
        steps: list[Step] = []
        ready = set(available)
        for node in toposort(nodes, available):
            attrs = Attrs(
                decode_attributes(node),
                op_type=node.op_type,
                opset=opset,
                num_outputs=len(node.output),
                node_name=labels.get(id(node), node_label(node, len(steps))),
            )
            branches = None
            if node.op_type == "If":
                then_b = self._compile_branch(attrs["then_branch"], ready, opset)
                else_b = self._compile_branch(attrs["else_branch"], ready, opset)
                branches = (then_b, else_b)
            deps = tuple(node_deps(node))
            steps.append(
                Step(OPS[node.op_type], attrs, tuple(node.input), tuple(node.output), (), deps, branches)
            )
            ready.update(n for n in node.output if n)
        return steps

    def _compile_branch(self, graph: onnx.GraphProto, outer: set[str], opset: int) -> Branch:
        consts: dict[str, str] = {}
        for init in graph.initializer:  # rare; constants of the branch, never trained
            attr = self._unique_attr("branch_" + init.name)
            self.register_buffer(attr, tensor_from_proto(init))
            consts[init.name] = attr
        nodes = list(graph.node)
        labels = {id(node): node_label(node, i) for i, node in enumerate(nodes)}
        steps = self._compile(nodes, outer | set(consts), opset, labels)
        outputs = tuple(o.name for o in graph.output)
        # Inside a branch only the branch's own values may be freed; outer ones live on.
        plan_frees(steps, keep=set(outputs), freeable={n for st in steps for n in st.outputs if n})
        return Branch(steps, outputs, consts)

    def _unique_attr(self, onnx_name: str) -> str:
        base = _sanitize(onnx_name)
        cand, k = base, 1
        while hasattr(self, cand) or cand in self._parameters or cand in self._buffers:
            cand = f"{base}_{k}"
            k += 1
        return cand

    @staticmethod
    def _is_trainable(
        name: str,
        value: Tensor,
        uses: list[tuple[str, int]],
        override: Callable[[str, np.ndarray], bool] | None,
    ) -> bool:
        if value.dtype not in _FLOAT_DTYPES:
            return False
        if override is not None:
            return bool(override(name, value.detach().float().numpy()))
        if value.numel() < 2 or not bool(torch.isfinite(value).all()):
            return False
        if not uses:
            return False
        return any(k not in _NON_DIFF_SLOTS.get(op_type, ()) for op_type, k in uses)

    # ------------------------------------------------------------------ weights by ONNX name

    def tensor(self, onnx_name: str) -> Tensor:
        """The Parameter or buffer holding initializer ``onnx_name``."""
        attr = self.param_names.get(onnx_name) or self.buffer_names.get(onnx_name)
        if attr is None:
            raise KeyError(f"no initializer named {onnx_name!r}")
        return getattr(self, attr)

    def named_onnx_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """(ONNX initializer name, Parameter) for every trainable initializer."""
        for onnx_name, attr in self.param_names.items():
            yield onnx_name, getattr(self, attr)

    def state_dict_onnx(self, include_buffers: bool = True) -> dict[str, Tensor]:
        """Current initializer values keyed by ONNX name (detached; buffers too unless told not)."""
        out = {n: getattr(self, a).detach() for n, a in self.param_names.items()}
        if include_buffers:
            out.update({n: getattr(self, a).detach() for n, a in self.buffer_names.items()})
        return out

    def load_state_dict_onnx(self, values: Mapping[str, Tensor | np.ndarray], strict: bool = True) -> None:
        """Copy values (keyed by ONNX initializer name) into the matching Parameters/buffers."""
        unknown = [k for k in values if k not in self.param_names and k not in self.buffer_names]
        if strict and unknown:
            raise KeyError(f"unknown initializer name(s): {unknown[:10]}")
        with torch.no_grad():
            for k, v in values.items():
                if k in unknown:
                    continue
                dst = self.tensor(k)
                src = torch.as_tensor(v)
                if tuple(src.shape) != tuple(dst.shape):
                    raise ValueError(f"{k}: shape {tuple(src.shape)} != {tuple(dst.shape)}")
                dst.copy_(src.to(dst.dtype))

    def export_initializers(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of ``model`` whose initializers hold this twin's current (e.g. trained) values."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        values = self.state_dict_onnx()
        for i, init in enumerate(out.graph.initializer):
            if init.name not in values:
                continue
            t = values[init.name].cpu()
            if t.dtype == torch.bfloat16:
                arr = t.float().numpy()
                proto = onnx.helper.make_tensor(
                    init.name, onnx.TensorProto.BFLOAT16, list(arr.shape), arr.reshape(-1).tolist()
                )
            else:
                proto = numpy_helper.from_array(t.numpy(), init.name)
                if proto.data_type != self._onnx_dtypes[init.name]:
                    proto = numpy_helper.from_array(
                        t.numpy().astype(onnx.helper.tensor_dtype_to_np_dtype(self._onnx_dtypes[init.name])),
                        init.name,
                    )
            out.graph.initializer[i].CopyFrom(proto)
        return out

    # ------------------------------------------------------------------ gates

    def set_gates(self, gates: Mapping[str, Gate | None]) -> None:
        """Multiply named tensors by gates during forward (``None`` removes a gate).

        A gate is a tensor broadcastable to the named tensor (e.g. shape ``[1, C, 1, 1]`` for a
        conv activation) or a callable ``tensor -> tensor``. It is applied where the tensor is
        produced (node output, graph input or initializer), so every consumer sees the gated value.
        """
        unknown = [n for n in gates if n not in self.tensor_names]
        if unknown:
            raise KeyError(f"no tensor(s) named {unknown[:10]} in the graph")
        for name, gate in gates.items():
            if gate is None:
                self._gates.pop(name, None)
            else:
                self._gates[name] = gate

    def clear_gates(self) -> None:
        self._gates.clear()

    @property
    def gates(self) -> dict[str, Gate]:
        return dict(self._gates)

    def _gate(self, name: str, value: Tensor) -> Tensor:
        gate = self._gates[name]
        if callable(gate) and not isinstance(gate, Tensor):
            return gate(value)
        if not value.is_floating_point():
            raise TypeError(f"cannot gate {name!r}: it holds {value.dtype} values, not floats")
        return value * gate.to(device=value.device, dtype=value.dtype)

    # ------------------------------------------------------------------ running

    def _bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Tensor]:
        if len(args) > len(self.input_names):
            raise DataError(f"model takes {len(self.input_names)} input(s), got {len(args)}")
        feeds: dict[str, Any] = dict(zip(self.input_names, args, strict=False))
        for k, v in kwargs.items():
            if k not in self._input_dtypes:
                raise DataError(f"unknown input {k!r}; the model's inputs are {self.input_names}")
            if k in feeds:
                raise DataError(f"input {k!r} given twice")
            feeds[k] = v
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise DataError(f"missing input(s) {missing}; the model's inputs are {self.input_names}")
        out: dict[str, Tensor] = {}
        for name, v in feeds.items():
            t = v if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v))
            want = self._input_dtypes.get(name)
            if want is not None and t.dtype != want:
                t = t.to(want)
            out[name] = t
        return out

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Tensor, ...]:
        outputs, _ = self._execute(self._bind(args, kwargs), ())
        return outputs

    def run(
        self,
        inputs: Mapping[str, Any] | Sequence[Any],
        capture: Iterable[str] = (),
    ) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        """Run the graph; return (graph outputs, {name: tensor} for each name in ``capture``).

        Captured values are taken after gating. They are live graph tensors: call
        ``retain_grad()`` on them to read their gradients after ``backward``.
        """
        feeds = self._bind((), inputs) if isinstance(inputs, Mapping) else self._bind(inputs, {})
        names = tuple(capture)
        unknown = [n for n in names if n not in self.tensor_names]
        if unknown:
            raise KeyError(f"no tensor(s) named {unknown[:10]} in the graph")
        return self._execute(feeds, names)

    def _execute(
        self, feeds: dict[str, Tensor], capture: tuple[str, ...]
    ) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        gates = self._gates
        env: dict[str, Tensor] = {}
        for name, attr in self.param_names.items():
            env[name] = getattr(self, attr)
        for name, attr in self.buffer_names.items():
            env[name] = getattr(self, attr)
        for name, attr in self._const_names.items():
            env[name] = getattr(self, attr)
        env.update(feeds)
        for name in gates:
            if name in env:
                env[name] = self._gate(name, env[name])

        # Mixed devices only arise off-CPU (Shape results stay on the host); check only then.
        mixed = any(t.device.type != "cpu" for t in env.values())
        self._run_steps(self._steps, env, set(capture), mixed)
        outputs = tuple(env[n] for n in self.output_names)
        return outputs, {n: env[n] for n in capture}

    def _run_steps(self, steps: list[Step], env: dict[str, Any], keep: set[str], mixed: bool) -> None:
        gates = self._gates
        for step in steps:
            ins: list[Any] = [env[n] if n else None for n in step.inputs]
            if mixed:
                ins = _same_device(ins)
            try:
                if step.branches is not None:
                    result: Any = self._run_if(step, ins, env, mixed)
                else:
                    result = step.fn(step.attrs, ins)  # type: ignore[misc]
            except Exception as exc:  # name the node: a bare torch error is hard to place
                exc.add_note(f"while running ONNX node {step.attrs.node_name!r} ({step.attrs.op_type})")
                raise
            if isinstance(result, Tensor):
                result = (result,)
            for name, value in zip(step.outputs, result, strict=False):
                if name and value is not None:
                    env[name] = self._gate(name, value) if name in gates else value
            for name in step.free:
                if name not in keep:
                    env.pop(name, None)

    def _run_if(self, step: Step, ins: list[Any], env: dict[str, Any], mixed: bool) -> tuple[Any, ...]:
        assert step.branches is not None
        # The condition is data-dependent control flow: read on the host, like onnxruntime does.
        branch = step.branches[0 if bool(ins[0].reshape(-1)[0]) else 1]
        scope = dict(env)
        for name, attr in branch.consts.items():
            scope[name] = getattr(self, attr)
        self._run_steps(branch.steps, scope, set(), mixed)
        return tuple(scope[n] for n in branch.outputs)

    # Op functions include lambdas, which pickle cannot name: drop them and look them up again.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_steps"] = strip_fns(self._steps)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        restore_fns(self._steps)

    def extra_repr(self) -> str:
        n_params = sum(math.prod(p.shape) for p in self.parameters())
        return (
            f"inputs={self.input_names}, outputs={self.output_names}, nodes={len(self._steps)}, "
            f"opset={self.opset}, params={n_params}"
        )


def _same_device(ins: list[Any]) -> list[Any]:
    """Move CPU tensors (shape arithmetic) next to the accelerator tensors they meet."""
    devices = {t.device for t in ins if isinstance(t, Tensor)}
    if len(devices) <= 1:
        return ins
    target = next(d for d in devices if d.type != "cpu")
    return [t.to(target) if isinstance(t, Tensor) and t.device != target else t for t in ins]
