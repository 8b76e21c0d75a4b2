"""The models of the runtime-speed bench (``bench.runtime_speed``): builders, ONNX export with a
dynamic batch axis, and what Torch-Pruning needs to know about each (ignored layers, heads).

- resnet50, mobilenet_v2, vit_b16, bert_base: transformers configs at their defaults (ImageNet-size
  classifiers with 1000 labels at 224x224; BERT-base classifying 128 tokens), seeded random weights
  and BatchNorm statistics; nothing is downloaded.
- yolov8: a hand-written YOLOv8-style detector (the ultralytics yolov8 layout at ``WIDTH`` /
  ``DEPTH``, i.e. YOLOv8s): Conv-BN-SiLU, C2f blocks that split in two (ONNX Split), SPPF (three chained
  max-pools), a PAN neck (upsample + concat), a decoupled head per level whose box (4 x reg_max) and
  class maps are flattened and concatenated into two outputs, ``boxes`` (N, 64, A) and ``scores``
  (N, 80, A) at 640x640 (A = 8400 anchors).

Torch-Pruning cannot re-size a split whose sizes the module hard-codes, so, as its own YOLOv8 example
does, it prunes a copy whose C2f blocks run two convolutions instead of one conv and a split
(``C2fTwoConvs``: the same function, the weights copied; ``split_free``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

MODELS = ("resnet50", "mobilenet_v2", "vit_b16", "bert_base", "yolov8")
CNNS = ("resnet50", "mobilenet_v2", "yolov8")
TRANSFORMERS = ("vit_b16", "bert_base")
SEQ = 128
IMAGE = 224
YOLO_IMAGE = 640
WIDTH, DEPTH, MAX_CHANNELS = 0.5, 0.33, 1024   # YOLOv8s
NUM_CLASSES, REG_MAX = 80, 16
OPSET = 17
TRACE_BATCH = 2   # traced at batch 2 so that nothing specializes on a batch of 1


# ------------------------------------------------------------------------------ YOLOv8-style detector


class ConvBnAct(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU, 'same' padding."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = ConvBnAct(c1, c2, 3)
        self.cv2 = ConvBnAct(c2, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with two convolutions: cv1 -> split in two -> n bottlenecks on the second half,
    each output kept -> concat -> cv2."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = ConvBnAct(c1, 2 * self.c, 1)
        self.cv2 = ConvBnAct((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C2fTwoConvs(nn.Module):
    """C2f without the split: cv1's two halves as two convolutions (Torch-Pruning's YOLOv8 example)."""

    def __init__(self, src: C2f) -> None:
        super().__init__()
        c = src.c
        c1 = src.cv1.conv.in_channels
        self.cv0, self.cv1 = ConvBnAct(c1, c, 1), ConvBnAct(c1, c, 1)
        for i, half in enumerate((self.cv0, self.cv1)):
            sl = slice(i * c, (i + 1) * c)
            half.conv.weight.data.copy_(src.cv1.conv.weight.data[sl])
            for a in ("weight", "bias", "running_mean", "running_var"):
                getattr(half.bn, a).data.copy_(getattr(src.cv1.bn, a).data[sl])
            half.bn.eps = src.cv1.bn.eps
        self.cv2, self.m = src.cv2, src.m
        self.train(src.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = ConvBnAct(c1, c_, 1)
        self.cv2 = ConvBnAct(c_ * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DetectHead(nn.Module):
    """Decoupled head: per level a box branch (two 3x3 convs, a 1x1 to 4 x reg_max) and a class branch
    (two 3x3 convs, a 1x1 to the classes); maps flattened over the pixels and concatenated over the
    levels. No DFL decode and no NMS: the raw maps are what is timed."""

    def __init__(self, ch: tuple[int, ...], nc: int = NUM_CLASSES, reg_max: int = REG_MAX) -> None:
        super().__init__()
        c2 = max(16, ch[0] // 4, reg_max * 4)
        c3 = max(ch[0], min(nc, 100))
        self.box = nn.ModuleList(
            nn.Sequential(ConvBnAct(c, c2, 3), ConvBnAct(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for c in ch)
        self.cls = nn.ModuleList(
            nn.Sequential(ConvBnAct(c, c3, 3), ConvBnAct(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in ch)

    def outputs(self) -> list[nn.Module]:
        return [s[-1] for s in (*self.box, *self.cls)]

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = torch.cat([b(x).flatten(2) for b, x in zip(self.box, feats, strict=True)], 2)
        scores = torch.cat([c(x).flatten(2) for c, x in zip(self.cls, feats, strict=True)], 2)
        return boxes, scores.sigmoid()


class YoloV8(nn.Module):
    """The yolov8.yaml layout: backbone with P3/P4/P5 taps and SPPF, PAN neck, decoupled head."""

    def __init__(self, width: float = WIDTH, depth: float = DEPTH, max_channels: int = MAX_CHANNELS,
                 nc: int = NUM_CLASSES) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return int(min(c, max_channels) * width)

        def n(k: int) -> int:
            return max(round(k * depth), 1)

        c1, c2, c3, c4, c5 = ch(64), ch(128), ch(256), ch(512), ch(1024)
        self.stem = ConvBnAct(3, c1, 3, 2)                                          # P1/2
        self.b1 = nn.Sequential(ConvBnAct(c1, c2, 3, 2), C2f(c2, c2, n(3), True))   # P2/4
        self.b2 = nn.Sequential(ConvBnAct(c2, c3, 3, 2), C2f(c3, c3, n(6), True))   # P3/8
        self.b3 = nn.Sequential(ConvBnAct(c3, c4, 3, 2), C2f(c4, c4, n(6), True))   # P4/16
        self.b4 = nn.Sequential(ConvBnAct(c4, c5, 3, 2), C2f(c5, c5, n(3), True), SPPF(c5, c5))  # P5/32
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.top_p4 = C2f(c5 + c4, c4, n(3))
        self.top_p3 = C2f(c4 + c3, c3, n(3))                                        # out P3
        self.down_p3 = ConvBnAct(c3, c3, 3, 2)
        self.bot_p4 = C2f(c3 + c4, c4, n(3))                                        # out P4
        self.down_p4 = ConvBnAct(c4, c4, 3, 2)
        self.bot_p5 = C2f(c4 + c5, c5, n(3))                                        # out P5
        self.head = DetectHead((c3, c4, c5), nc)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p3 = self.b2(self.b1(self.stem(x)))
        p4 = self.b3(p3)
        p5 = self.b4(p4)
        t4 = self.top_p4(torch.cat([self.up(p5), p4], 1))
        o3 = self.top_p3(torch.cat([self.up(t4), p3], 1))
        o4 = self.bot_p4(torch.cat([self.down_p3(o3), t4], 1))
        o5 = self.bot_p5(torch.cat([self.down_p4(o4), p5], 1))
        return self.head([o3, o4, o5])


def split_free(model: nn.Module) -> nn.Module:
    """The same model with every C2f replaced by its two-convolution twin (in place)."""
    for name, child in list(model.named_children()):
        if isinstance(child, C2f):
            setattr(model, name, C2fTwoConvs(child))
        else:
            split_free(child)
    return model


# ------------------------------------------------------------------------------ builders


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (seeded), as a trained net has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                k = m.num_features
                m.running_mean.copy_(torch.randn(k, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(k, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.rand(k, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(k, generator=g) * 0.1)
    return model


class Selected(nn.Module):
    """A transformers model called with positional tensors, returning its logits."""

    def __init__(self, model: nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model, self.input_names = model, input_names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, args, strict=True)))["logits"]


def build(name: str, batch: int = 1) -> tuple[nn.Module, dict[str, torch.Tensor], list[str]]:
    """(eval model, example inputs by name at ``batch``, output names); seeded random weights."""
    import transformers as tf

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    image = (batch, 3, IMAGE, IMAGE)
    if name == "yolov8":
        model: nn.Module = _randomize_bn(YoloV8())
        return model.eval(), {"images": torch.randn(batch, 3, YOLO_IMAGE, YOLO_IMAGE, generator=g)}, \
            ["boxes", "scores"]
    if name == "resnet50":
        hf = tf.ResNetForImageClassification(tf.ResNetConfig(num_labels=1000))
        inputs = {"pixel_values": torch.randn(*image, generator=g)}
    elif name == "mobilenet_v2":
        hf = tf.MobileNetV2ForImageClassification(tf.MobileNetV2Config(num_labels=1000))
        inputs = {"pixel_values": torch.randn(*image, generator=g)}
    elif name == "vit_b16":
        hf = tf.ViTForImageClassification._from_config(tf.ViTConfig(num_labels=1000), attn_implementation="eager")
        inputs = {"pixel_values": torch.randn(*image, generator=g)}
    elif name == "bert_base":
        hf = tf.BertForSequenceClassification._from_config(tf.BertConfig(), attn_implementation="eager")
        inputs = {"input_ids": torch.randint(3, 30000, (batch, SEQ), generator=g)}
    else:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    _randomize_bn(hf)
    return Selected(hf.eval(), list(inputs)).eval(), inputs, ["logits"]


def export(model: nn.Module, inputs: dict[str, torch.Tensor], output_names: list[str], path: str) -> None:
    """ONNX, TorchScript exporter (dynamo=False), opset 17, a dynamic batch axis on every input and
    output; traced at batch ``TRACE_BATCH``."""
    import contextlib
    import io
    import warnings

    args = tuple(torch.cat([x[:1]] * TRACE_BATCH, 0) for x in inputs.values())
    axes = {n: {0: "batch"} for n in [*inputs, *output_names]}
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, dynamo=False, do_constant_folding=True, opset_version=OPSET,
                          input_names=list(inputs), output_names=output_names, dynamic_axes=axes)


# ------------------------------------------------------------------------------ Torch-Pruning's view


QKV_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))


def attention_modules(model: nn.Module) -> list[tuple[nn.Module, tuple[nn.Linear, nn.Linear, nn.Linear]]]:
    """transformers self-attention modules and their q/k/v projections (as in bench.prune_speed)."""
    found = []
    for m in model.modules():
        for names in QKV_NAMES:
            projs = tuple(getattr(m, a, None) for a in names)
            if all(isinstance(p, nn.Linear) for p in projs) and hasattr(m, "num_attention_heads"):
                found.append((m, projs))
    return found  # type: ignore[return-value]


def fix_head_sizes(attn: list[tuple[nn.Module, tuple[nn.Linear, nn.Linear, nn.Linear]]]) -> None:
    """What the Torch-Pruning examples do for transformers attention after pruning head dims."""
    for m, (q, _, _) in attn:
        size = q.out_features // m.num_attention_heads
        for a in ("attention_head_size", "head_dim"):
            if hasattr(m, a):
                setattr(m, a, size)
        if hasattr(m, "all_head_size"):
            m.all_head_size = q.out_features


def tp_ignored(name: str, model: nn.Module) -> list[nn.Module]:
    """Layers whose outputs Torch-Pruning must keep: the classifier, the detector's output convs."""
    if name == "yolov8":
        head = next(m for m in model.modules() if isinstance(m, DetectHead))
        return head.outputs()
    return [m for n, m in model.named_modules()
            if (n.endswith("classifier") or n.endswith("classifier.1")) and isinstance(m, nn.Linear)]


def tp_model(name: str) -> tuple[nn.Module, dict[str, torch.Tensor], list[str], dict[str, Any]]:
    """The model as Torch-Pruning prunes it, with the MetaPruner keywords it needs for this model."""
    model, inputs, outs = build(name)
    if name == "yolov8":
        split_free(model)
    attn = attention_modules(model)
    kw: dict[str, Any] = {"ignored_layers": tp_ignored(name, model)}
    if attn:
        kw |= {"num_heads": {p: m.num_attention_heads for m, projs in attn for p in projs},
               "prune_head_dims": True, "prune_num_heads": False}
    return model, inputs, outs, kw
