"""Small hand-written nets for core tests (exported with the torchscript exporter: fast)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


class MixNet(nn.Module):
    """Residual + BN, depthwise, grouped conv, SE gate, concat, flatten -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 24, 1)
        self.gc = nn.Conv2d(24, 24, 3, padding=1, groups=4)
        self.se1, self.se2 = nn.Linear(24, 6), nn.Linear(6, 24)
        self.c3, self.c4 = nn.Conv2d(24, 8, 1), nn.Conv2d(24, 8, 1)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = x + torch.relu(self.b2(self.c2(x)))
        x = self.pw(self.dw(x))
        x = torch.relu(self.gc(x))
        g = torch.sigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3))))))
        x = x * g[:, :, None, None]
        x = torch.cat([self.c3(x), self.c4(x)], 1)
        x = nn.functional.max_pool2d(x, 2)
        return self.fc(x.flatten(1))


class Attn(nn.Module):
    """One multi-head self-attention block with an MLP, LayerNorm-free (every group exact)."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, 64), nn.Linear(64, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, s, self.h, self.dh).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / self.dh**0.5, dim=-1)
        ctx = (a @ v).transpose(1, 2).reshape(b, s, d)
        x = x + self.o(ctx)
        x = x + self.down(torch.relu(self.up(x)))
        return self.head(x.mean(1))


def export(model: nn.Module, example: tuple[torch.Tensor, ...], path: Path, names: list[str],
           dynamo: bool = False) -> Path:
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        for m in model.modules():  # non-trivial BN statistics so folding/keeping matters
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    torch.onnx.export(model, example, str(path), input_names=names, dynamo=dynamo,
                      opset_version=18 if dynamo else 17)
    return path


def verify_catches_a_wrong_cut(path: Path, min_size: int, k: int):
    """Cut the first ``k`` channels of a group of at least ``min_size``: the check passes for them
    and fails when told other channels went (it is not vacuous). Returns the analysis."""
    import numpy as np

    from pruning_core import surgery, verify
    from pruning_core.analysis import groups
    from pruning_core.ir import graph
    from pruning_core.runtime.data import synthetic_inputs

    g = graph.load(path)
    an = groups.analyze(g)
    grp = next(gr for gr in an.groups if gr.prunable and gr.size >= min_size)
    removed = np.zeros(an.n_channels, bool)
    removed[grp.channels[:k]] = True
    pruned = surgery.apply(an, removed)
    x = synthetic_inputs(g)
    assert verify.verify(an, removed, pruned, x)["passed"]
    other = np.zeros_like(removed)
    other[grp.channels[k:2 * k]] = True
    assert not verify.verify(an, other, pruned, x)["passed"]
    return an
