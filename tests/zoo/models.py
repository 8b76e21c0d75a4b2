"""The zoo: importing this module registers every architecture in `ZOO`."""

from __future__ import annotations

from tests.zoo import handwritten, recurrent, text, vision  # noqa: F401  (registration side effects)
from tests.zoo.registry import EXPORTERS, ZOO, Built, ZooEntry, quantized

# QDQ graphs (QuantizeLinear / DequantizeLinear around float ops), as onnxruntime.quantization
# writes them: pruned through, the integer weights and their per-channel scales sliced together.
quantized("resnet_qdq", "resnet", "qdq-per-channel")
quantized("se_blocks_qdq", "se_blocks", "qdq")
quantized("bert_qdq", "bert", "qdq-per-channel")

__all__ = ["EXPORTERS", "ZOO", "Built", "ZooEntry"]
