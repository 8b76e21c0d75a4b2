"""Hand-written nets, each aimed at one graph pattern the pruner must handle."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.zoo.registry import Built, image, randomize_norm_stats, register


def _built(model: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str]) -> Built:
    return Built(randomize_norm_stats(model).eval(), inputs, list(inputs), outputs)


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class PlainCNN(nn.Module):
    """Conv+BN+ReLU stack, max pooling, Flatten into a Linear head (a channel becomes a block of columns)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(cbr(3, 16), nn.MaxPool2d(2), cbr(16, 32), nn.MaxPool2d(2), cbr(32, 32))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConcatSplit(nn.Module):
    """Branches concatenated on channels, split into unequal parts, processed, concatenated again."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.a = cbr(16, 8)
        self.b = cbr(16, 24, k=1)
        self.c = cbr(16, 16, k=5)
        self.after_split = nn.ModuleList([cbr(12, 12), cbr(20, 20), cbr(16, 16)])
        self.mix = cbr(48 + 16, 32, k=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        cat = torch.cat([self.a(s), self.b(s), self.c(s)], dim=1)  # 48 channels
        parts = torch.split(cat, [12, 20, 16], dim=1)
        y = torch.cat([m(p) for m, p in zip(self.after_split, parts, strict=True)] + [s], dim=1)
        y = self.mix(y)
        lo, hi = torch.chunk(y, 2, dim=1)
        y = torch.cat([hi, lo * torch.sigmoid(hi)], dim=1)
        return self.head(y.mean(dim=(2, 3)))


class GroupedConv(nn.Module):
    """ResNeXt-style blocks: grouped 3x3 convs (groups 4 and 8) inside residual bottlenecks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32)
        self.blocks = nn.ModuleList(
            nn.Sequential(cbr(32, 32, k=1), cbr(32, 32, groups=g), nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32))
            for g in (4, 8)
        )
        self.down = cbr(32, 64, stride=2, groups=2)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = F.relu(x + b(x))
        x = self.down(x)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DepthwiseSeparable(nn.Module):
    """MobileNet-style depthwise 3x3 + pointwise 1x1, ReLU6 (Clip), inverted residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw1 = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.ReLU6())
        self.pw1 = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU6())
        self.inv = nn.Sequential(
            nn.Conv2d(32, 96, 1),
            nn.BatchNorm2d(96),
            nn.ReLU6(),
            nn.Conv2d(96, 96, 3, 1, 1, groups=96),
            nn.BatchNorm2d(96),
            nn.ReLU6(),
            nn.Conv2d(96, 32, 1),
            nn.BatchNorm2d(32),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw1(self.dw1(self.stem(x)))
        x = x + self.inv(x)
        return self.head(x.mean(dim=(2, 3)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            cbr(half, half, k=1),
            nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            cbr(half, half, k=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], dim=1), 2)


class ChannelShuffle(nn.Module):
    """ShuffleNetV2 units: split, branch, concat, reshape (g, c/g) + transpose + reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32, stride=2)
        self.units = nn.Sequential(ShuffleUnit(32), ShuffleUnit(32))
        self.grouped = cbr(32, 32, k=1, groups=4)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channel_shuffle(self.grouped(self.units(self.stem(x))), 4)
        return self.head(x.mean(dim=(2, 3)))


class PixelShuffleNet(nn.Module):
    """PixelUnshuffle (SpaceToDepth) down and PixelShuffle (DepthToSpace) up, as in ESPCN-like SR nets."""

    def __init__(self) -> None:
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(2)
        self.body = nn.Sequential(cbr(12, 32), cbr(32, 32))
        self.up = nn.Conv2d(32, 16 * 4, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(2)
        self.tail = nn.Conv2d(16, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(F.relu(self.up(self.body(self.unshuffle(x)))))
        return x + self.tail(y)


class SE(nn.Module):
    def __init__(self, c: int, r: int = 4, hard: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)
        self.gate: nn.Module = nn.Hardsigmoid() if hard else nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(F.relu(self.fc1(s))))


class SENet(nn.Module):
    """Squeeze-and-excitation gates (Sigmoid and HardSigmoid, conv- and linear-based) on residual blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 32)
        self.b1 = nn.Sequential(cbr(32, 32), SE(32))
        self.b2 = nn.Sequential(cbr(32, 64, stride=2), SE(64, hard=True))
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.b1(x)
        x = self.b2(x)
        s = x.mean(dim=(2, 3))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        x = F.hardswish(x * gate[:, :, None, None])
        return self.head(x.mean(dim=(2, 3)))


class MultiIO(nn.Module):
    """Two inputs (image, feature vector), fused; two outputs (class logits, embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(cbr(3, 16, stride=2), cbr(16, 32, stride=2))
        self.vec = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 32))
        self.fuse = nn.Linear(64, 48)
        self.cls = nn.Linear(48, 5)
        self.emb = nn.Linear(48, 8)

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.conv(image).mean(dim=(2, 3))
        b = self.vec(features)
        h = torch.tanh(self.fuse(torch.cat([a, b * a], dim=1)))
        return self.cls(h), F.normalize(self.emb(h), dim=1)


class UNet(nn.Module):
    """Two-level U-Net: ConvTranspose upsampling, skip concats, per-pixel class map."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(cbr(3, 16), cbr(16, 16))
        self.enc2 = nn.Sequential(cbr(16, 32), cbr(32, 32))
        self.mid = nn.Sequential(cbr(32, 64), cbr(64, 64))
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = nn.Sequential(cbr(64, 32), cbr(32, 32))
        self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2, groups=2)
        self.dec1 = nn.Sequential(cbr(32, 16), cbr(16, 16))
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([e1, self.up1(d2)], dim=1))
        return self.out(d1)


class NormsActs(nn.Module):
    """GroupNorm, InstanceNorm, Conv1d, padding, nearest upsampling and a spread of activations."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, 1, 1)
        self.gn = nn.GroupNorm(4, 16)
        self.c2 = nn.Conv2d(16, 24, 3, 2, 0)
        self.inorm = nn.InstanceNorm2d(24, affine=True)
        self.c3 = nn.Conv2d(24, 24, 3, 1, 1)
        self.c4 = nn.Conv1d(24, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.gn(self.c1(x)), 0.1)
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        x = F.elu(self.inorm(self.c2(x)))
        x = F.silu(self.c3(F.interpolate(x, scale_factor=2.0, mode="nearest"))) + F.softplus(
            F.interpolate(x, scale_factor=2.0, mode="nearest")
        )
        x = F.avg_pool2d(x, 4)
        x = F.gelu(self.c4(x.flatten(2)))
        return self.fc(torch.clamp(x, -3.0, 3.0).amax(dim=2))


class MLP(nn.Module):
    """Residual MLP: Linear (Gemm / MatMul), LayerNorm, GELU, Tanh, a weight on the left of a MatMul."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(24, 64)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
            for _ in range(2)
        )
        self.mix = nn.Parameter(torch.randn(6, 6) * 0.3)  # mixes tokens: weight on the left side
        self.fc = nn.Linear(64, 32)
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        h = torch.matmul(self.mix, h)
        return self.out(torch.tanh(self.fc(h))).mean(dim=1)


@register("plain_cnn", "handwritten")
def plain_cnn() -> Built:
    return _built(PlainCNN(), {"input": image(size=32)}, ["logits"])


@register("concat_split", "handwritten")
def concat_split() -> Built:
    return _built(ConcatSplit(), {"input": image(size=32)}, ["logits"])


@register("grouped_conv", "handwritten")
def grouped_conv() -> Built:
    return _built(GroupedConv(), {"input": image(size=32)}, ["logits"])


@register("depthwise_separable", "handwritten")
def depthwise_separable() -> Built:
    return _built(DepthwiseSeparable(), {"input": image(size=32)}, ["logits"])


@register("channel_shuffle", "handwritten")
def channel_shuffle_net() -> Built:
    return _built(ChannelShuffle(), {"input": image(size=32)}, ["logits"])


@register("pixel_shuffle", "handwritten")
def pixel_shuffle() -> Built:
    return _built(PixelShuffleNet(), {"input": image(size=32)}, ["image"])


@register("se_blocks", "handwritten")
def se_blocks() -> Built:
    return _built(SENet(), {"input": image(size=32)}, ["logits"])


@register("multi_io", "handwritten")
def multi_io() -> Built:
    g = torch.Generator().manual_seed(2)
    inputs = {"image": image(size=32), "features": torch.randn(1, 12, generator=g)}
    return _built(MultiIO(), inputs, ["logits", "embedding"])


@register("unet", "handwritten")
def unet() -> Built:
    return _built(UNet(), {"input": image(size=32)}, ["mask_logits"])


@register("norms_acts", "handwritten")
def norms_acts() -> Built:
    return _built(NormsActs(), {"input": image(size=32)}, ["logits"])


@register("mlp", "handwritten")
def mlp() -> Built:
    g = torch.Generator().manual_seed(3)
    return _built(MLP(), {"input": torch.randn(1, 6, 24, generator=g)}, ["logits"])


class PreActBN(nn.Module):
    """Pre-activation residual blocks (BN -> ReLU -> Conv) and BatchNorm1d after pooling: BatchNormalization
    nodes that no exporter can fold into a preceding Conv/Gemm, so they stay in the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, 1, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.BatchNorm2d(32),
                nn.ReLU(),
                nn.Conv2d(32, 48, 3, 1, 1),
                nn.BatchNorm2d(48),
                nn.ReLU(),
                nn.Conv2d(48, 32, 3, 1, 1),
            )
            for _ in range(2)
        )
        self.bn_out = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32, 64)
        self.bn1d = nn.BatchNorm1d(32)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x)
        x = F.max_pool2d(F.relu(self.bn_out(x)), 2)
        v = self.bn1d(x.mean(dim=(2, 3)))
        return self.head(F.relu(self.fc1(v)))


@register("preact_bn", "handwritten")
def preact_bn() -> Built:
    return _built(PreActBN(), {"input": image(size=32)}, ["logits"])


@register("yolov8", "handwritten")
def yolov8() -> Built:
    """The YOLOv8 layout of bench/models_speed.py (C2f blocks that Split in two, SPPF, PAN neck,
    decoupled head) at a sixteenth of YOLOv8s' widths."""
    from bench.models_speed import YoloV8

    return _built(YoloV8(width=0.125, depth=0.33, nc=8), {"input": image(size=64)}, ["boxes", "scores"])


class Branchy(nn.Module):
    """A data-dependent branch (``torch.cond``, an ONNX ``If``) on conv features: the channels the
    branches read stay whole, the convolutions before and after still prune."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.mid, self.head = cbr(3, 16), cbr(16, 24), nn.Linear(24, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.mid(self.stem(x))
        g = torch.cond(f.mean() > 0.5, lambda t: t * 2.0, lambda t: t - 1.0, (f,))
        return self.head(g.mean(dim=(2, 3)))


@register("if_branch", "handwritten", exporters=("dynamo",))
def if_branch() -> Built:
    return _built(Branchy(), {"input": image(size=16)}, ["logits"])
