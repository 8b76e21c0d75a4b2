"""Vision architectures from transformers configs: small sizes, random (seeded) weights."""

from __future__ import annotations

from typing import Any

import transformers as tf

from tests.zoo.registry import Built, OutputSelect, image, randomize_norm_stats, register

N_LABELS = 10


def _classifier(cls: Any, config: Any, size: int, key: str = "logits") -> Built:
    config.num_labels = N_LABELS
    model = cls._from_config(config, attn_implementation="eager")
    randomize_norm_stats(model)
    names = ["pixel_values"]
    return Built(OutputSelect(model.eval(), names, [key]), {"pixel_values": image(size=size)}, names, [key])


STAGES = {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1]}
VIT = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}


@register("resnet", "vision")
def resnet() -> Built:
    cfg = tf.ResNetConfig(embedding_size=16, **STAGES)
    return _classifier(tf.ResNetForImageClassification, cfg, 64)


@register("convnext", "vision")
def convnext() -> Built:
    return _classifier(tf.ConvNextForImageClassification, tf.ConvNextConfig(**STAGES), 64)


GRN_EXCUSE = (
    "GRN divides by the mean over channels (ReduceMean on the channel axis) and the residual stream "
    "meets LayerNorm, so no group is exactly prunable; it prunes with approximate=true"
)


@register("convnextv2", "vision", excused={"dynamo": GRN_EXCUSE, "torchscript": GRN_EXCUSE})
def convnextv2() -> Built:
    return _classifier(tf.ConvNextV2ForImageClassification, tf.ConvNextV2Config(**STAGES), 64)


@register("mobilenet_v1", "vision")
def mobilenet_v1() -> Built:
    cfg = tf.MobileNetV1Config(depth_multiplier=0.25, image_size=64)
    return _classifier(tf.MobileNetV1ForImageClassification, cfg, 64)


@register("mobilenet_v2", "vision")
def mobilenet_v2() -> Built:
    cfg = tf.MobileNetV2Config(depth_multiplier=0.35, image_size=64)
    return _classifier(tf.MobileNetV2ForImageClassification, cfg, 64)


@register("efficientnet", "vision")
def efficientnet() -> Built:
    cfg = tf.EfficientNetConfig(image_size=64, width_coefficient=0.25, depth_coefficient=0.2, hidden_dim=320)
    return _classifier(tf.EfficientNetForImageClassification, cfg, 64)


@register("regnet", "vision")
def regnet() -> Built:
    cfg = tf.RegNetConfig(embedding_size=16, groups_width=8, layer_type="y", **STAGES)
    return _classifier(tf.RegNetForImageClassification, cfg, 64)


@register("vit", "vision")
def vit() -> Built:
    cfg = tf.ViTConfig(image_size=32, patch_size=8, **VIT)
    return _classifier(tf.ViTForImageClassification, cfg, 32)


@register("deit", "vision")
def deit() -> Built:
    cfg = tf.DeiTConfig(image_size=32, patch_size=8, **VIT)
    return _classifier(tf.DeiTForImageClassification, cfg, 32)


@register("swin", "vision")
def swin() -> Built:
    cfg = tf.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4
    )
    return _classifier(tf.SwinForImageClassification, cfg, 32)


@register("beit", "vision")
def beit() -> Built:
    cfg = tf.BeitConfig(image_size=32, patch_size=8, use_relative_position_bias=True, **VIT)
    return _classifier(tf.BeitForImageClassification, cfg, 32)


@register("dinov2", "vision")
def dinov2() -> Built:
    cfg = tf.Dinov2Config(image_size=32, patch_size=8, **VIT)
    return _classifier(tf.Dinov2ForImageClassification, cfg, 32)


@register("levit", "vision")
def levit() -> Built:
    cfg = tf.LevitConfig(
        image_size=64,
        hidden_sizes=[32, 48, 64],
        num_attention_heads=[2, 3, 4],
        depths=[1, 1, 1],
        key_dim=[8, 8, 8],
        down_ops=[["Subsample", 8, 32 // 8, 4, 2, 2], ["Subsample", 8, 48 // 8, 4, 2, 2]],
    )
    return _classifier(tf.LevitForImageClassification, cfg, 64)


@register("mobilevit", "vision")
def mobilevit() -> Built:
    cfg = tf.MobileViTConfig(
        image_size=64,
        hidden_sizes=[32, 40, 48],
        neck_hidden_sizes=[8, 16, 24, 32, 40, 48, 96],
        num_attention_heads=2,
    )
    return _classifier(tf.MobileViTForImageClassification, cfg, 64)


@register("poolformer", "vision")
def poolformer() -> Built:
    cfg = tf.PoolFormerConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])
    return _classifier(tf.PoolFormerForImageClassification, cfg, 64)


@register("segformer", "vision")
def segformer() -> Built:
    cfg = tf.SegformerConfig(
        hidden_sizes=[16, 32, 64, 128],
        num_attention_heads=[1, 2, 4, 8],
        depths=[1, 1, 1, 1],
        decoder_hidden_size=64,
    )
    return _classifier(tf.SegformerForSemanticSegmentation, cfg, 64)


@register("pvt", "vision")
def pvt() -> Built:
    cfg = tf.PvtConfig(
        image_size=64,
        hidden_sizes=[16, 32, 64, 128],
        num_attention_heads=[1, 2, 4, 8],
        depths=[1, 1, 1, 1],
    )
    return _classifier(tf.PvtForImageClassification, cfg, 64)
