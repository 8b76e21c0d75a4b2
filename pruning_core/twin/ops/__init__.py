"""Torch implementations of ONNX operators, used by the torch twin (``pruning_core.twin.executor``).

One table, :data:`OPS` (``table.py``), filled by one module per op family (elementwise, activation,
linear, conv, norm, reduce, shape, indexing, generate, resize, control), in the spirit of ONNX's
reference evaluator: small pieces, one table.

Every function mirrors onnxruntime's CPU kernels rather than torch's own conventions where the two
differ (Resize coordinate rules, Pad modes, asymmetric pads, integer Div/Mod...), because the twin
must agree with onnxruntime to 1e-4 of the output scale. Functions stay differentiable in their
float inputs: no in-place writes into tensors that may require grad, no ``.item()`` on data paths.
"""

from pruning_core.twin.ops import (  # noqa: F401  (registration)
    activation,
    control,
    conv,
    elementwise,
    generate,
    indexing,
    linear,
    norm,
    reduce,
    resize,
    shape,
)
from pruning_core.twin.ops.table import CHECKS, OPS, Attrs, CheckFn, OpFn, OpResult, Tensor
from pruning_core.twin.ops.tensors import (
    ONNX_TO_TORCH,
    TORCH_TO_ONNX,
    decode_attributes,
    tensor_from_proto,
    torch_dtype,
)

__all__ = [
    "CHECKS",
    "ONNX_TO_TORCH",
    "OPS",
    "TORCH_TO_ONNX",
    "Attrs",
    "CheckFn",
    "OpFn",
    "OpResult",
    "Tensor",
    "decode_attributes",
    "tensor_from_proto",
    "torch_dtype",
]
