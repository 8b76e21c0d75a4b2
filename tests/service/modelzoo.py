"""Small real models for the service tests (built with torch, exported with the TorchScript
exporter: the tests run where the library runs, never in the API process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_cnn(path: Path, *, width: int = 8, depth: int = 2, size: int = 16, seed: int = 0) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c_in = 1
    for _ in range(depth):
        layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        c_in = width
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()
    x = torch.randn(1, 1, size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, (x,), str(path), input_names=["input"], output_names=["logits"], dynamo=False)
    return path


def npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path
