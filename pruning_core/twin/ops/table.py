"""The op table of the torch twin: ONNX op type -> torch function, and the construction checks.

``OPS`` maps an op type to ``fn(attrs, inputs) -> Tensor | tuple[Tensor | None, ...]``. ``attrs`` is
an :class:`Attrs` (the node's attributes, decoded, plus the opset and the number of outputs the
node declares); ``inputs`` are torch tensors, ``None`` for absent optional inputs.

``CHECKS`` holds construction-time validators ``fn(attrs) -> reason | None`` for attribute
combinations a function does not implement, so that the executor can refuse a model up front
instead of failing mid-forward.

Both are :class:`~pruning_core.registry.Registry` tables, filled by the family modules of this
package one way: ``@OPS.register("Name", ...)`` / ``@CHECKS.register(...)`` on a function, or
``OPS[name] = fn`` for entries generated from a small table. A second entry under a name is an
error at import, never a silent overwrite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pruning_core.registry import Registry

Tensor = torch.Tensor
OpResult = Tensor | tuple[Tensor | None, ...] | list[Tensor]
OpFn = Callable[["Attrs", list[Tensor | None]], OpResult]
CheckFn = Callable[["Attrs"], str | None]


class Attrs(dict[str, Any]):
    """A node's decoded attributes, plus the context an op needs beyond them."""

    def __init__(
        self, values: dict[str, Any], *, op_type: str, opset: int, num_outputs: int, node_name: str
    ) -> None:
        super().__init__(values)
        self.op_type = op_type
        self.opset = opset
        self.num_outputs = num_outputs
        self.node_name = node_name


OPS: Registry[OpFn] = Registry("twin op")
CHECKS: Registry[CheckFn] = Registry("twin op check")
