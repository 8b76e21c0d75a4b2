"""ONNX tensors and attributes as torch values: element types, TensorProtos, node attributes."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

Tensor = torch.Tensor


_P = onnx.TensorProto
ONNX_TO_TORCH: dict[int, torch.dtype] = {
    _P.FLOAT: torch.float32,
    _P.DOUBLE: torch.float64,
    _P.FLOAT16: torch.float16,
    _P.BFLOAT16: torch.bfloat16,
    _P.INT8: torch.int8,
    _P.UINT8: torch.uint8,
    _P.INT16: torch.int16,
    _P.UINT16: torch.uint16,
    _P.INT32: torch.int32,
    _P.UINT32: torch.uint32,
    _P.INT64: torch.int64,
    _P.UINT64: torch.uint64,
    _P.BOOL: torch.bool,
    _P.COMPLEX64: torch.complex64,
    _P.COMPLEX128: torch.complex128,
}


TORCH_TO_ONNX: dict[torch.dtype, int] = {v: k for k, v in ONNX_TO_TORCH.items()}


def torch_dtype(onnx_type: int) -> torch.dtype:
    try:
        return ONNX_TO_TORCH[onnx_type]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(onnx_type)
        raise TypeError(f"ONNX element type {name} has no torch equivalent in the twin") from None


def tensor_from_proto(proto: onnx.TensorProto) -> Tensor:
    """An ONNX TensorProto as a (CPU, owning) torch tensor, keeping its element type."""
    dtype = torch_dtype(proto.data_type)
    arr = numpy_helper.to_array(proto)
    if dtype == torch.bfloat16:
        # numpy has no bfloat16; float32 holds every bfloat16 value exactly.
        return torch.from_numpy(np.asarray(arr, dtype=np.float32).copy()).to(torch.bfloat16)
    return torch.from_numpy(np.array(arr, copy=True)).to(dtype)


def decode_attributes(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for at in node.attribute:
        value = onnx.helper.get_attribute_value(at)
        if at.type == onnx.AttributeProto.STRING:
            value = value.decode("utf-8")
        elif at.type == onnx.AttributeProto.STRINGS:
            value = [v.decode("utf-8") for v in value]
        elif at.type == onnx.AttributeProto.TENSOR:
            value = tensor_from_proto(value)
        elif at.type in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
            value = list(value)
        out[at.name] = value
    return out
