"""Zoo registry: a named builder per architecture, each returning a small, seeded, eval-mode model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

EXPORTERS: tuple[str, ...] = ("dynamo", "torchscript")


class Built(NamedTuple):
    """What a builder returns: the model and everything needed to export and run it."""

    model: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    input_names: list[str]
    output_names: list[str]


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str  # "vision", "text", "audio", "handwritten"
    builder: Callable[[], Built]
    # exporter -> reason; an excused (entry, exporter) is reported, not failed.
    excused: dict[str, str] = field(default_factory=dict)
    # the export quantized by onnxruntime.quantization before use: "qdq" (per tensor) or
    # "qdq-per-channel" (weights per output channel); None: the float export
    quantize: str | None = None
    # the exporters that can write it at all (torch.cond does not trace: no TorchScript export)
    exporters: tuple[str, ...] = EXPORTERS

    def build(self) -> Built:
        torch.manual_seed(0)
        built = self.builder()
        built.model.eval()
        return built


ZOO: dict[str, ZooEntry] = {}


def register(
    name: str, family: str, *, excused: dict[str, str] | None = None, quantize: str | None = None,
    exporters: tuple[str, ...] = EXPORTERS,
) -> Callable[[Callable[[], Built]], Callable[[], Built]]:
    def deco(fn: Callable[[], Built]) -> Callable[[], Built]:
        if name in ZOO:
            raise ValueError(f"duplicate zoo entry {name!r}")
        ZOO[name] = ZooEntry(name, family, fn, dict(excused or {}), quantize, exporters)
        return fn

    return deco


def quantized(name: str, of: str, how: str) -> None:
    """``name``: the entry ``of`` exported, then quantized ``how`` (see ZooEntry.quantize)."""
    register(name, ZOO[of].family, quantize=how)(ZOO[of].builder)


class OutputSelect(torch.nn.Module):
    """Wraps a model called with keyword inputs so that it returns plain tensors.

    `keys` picks fields of the returned ModelOutput (or indices of a tuple), in order.
    """

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str], keys: Sequence[str | int]) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.keys = list(keys)

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.input_names, args, strict=True)))
        picked = tuple(out[k] for k in self.keys)
        return picked[0] if len(picked) == 1 else picked


def image(batch: int = 1, channels: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=g)


def token_ids(vocab: int, length: int = 16, batch: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # avoid id 0/1 (common pad ids) so position ids and masks behave as for real text
    return torch.randint(3, vocab, (batch, length), generator=g, dtype=torch.int64)


def randomize_norm_stats(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm layers non-trivial running statistics and affine params (seeded)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.running_mean is not None and m.running_var is not None:
                    m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model
