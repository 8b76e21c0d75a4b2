"""Text and audio architectures from transformers configs: small sizes, random (seeded) weights."""

from __future__ import annotations

from typing import Any

import torch
import transformers as tf

from tests.zoo.registry import Built, OutputSelect, randomize_norm_stats, register, token_ids

VOCAB = 1000
SEQ = 16
N_LABELS = 4
ENCODER = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 64,
}


def _make(cls: Any, config: Any) -> torch.nn.Module:
    return cls._from_config(config, attn_implementation="eager").eval()


def _text(cls: Any, config: Any, *, with_mask: bool = False, key: str = "logits") -> Built:
    if hasattr(config, "use_cache"):
        config.use_cache = False
    model = _make(cls, config)
    inputs = {"input_ids": token_ids(VOCAB, SEQ)}
    if with_mask:
        mask = torch.ones(1, SEQ, dtype=torch.int64)
        mask[:, -3:] = 0  # a padded tail, so the mask really does something
        inputs["attention_mask"] = mask
    names = list(inputs)
    return Built(OutputSelect(model, names, [key]), inputs, names, [key])


@register("bert", "text")
def bert() -> Built:
    cfg = tf.BertConfig(num_labels=N_LABELS, **ENCODER)
    return _text(tf.BertForSequenceClassification, cfg, with_mask=True)


@register("distilbert", "text")
def distilbert() -> Built:
    cfg = tf.DistilBertConfig(
        vocab_size=VOCAB,
        dim=64,
        n_layers=2,
        n_heads=4,
        hidden_dim=128,
        max_position_embeddings=64,
        num_labels=N_LABELS,
    )
    return _text(tf.DistilBertForSequenceClassification, cfg)


@register("roberta", "text")
def roberta() -> Built:
    cfg = tf.RobertaConfig(num_labels=N_LABELS, **ENCODER)
    return _text(tf.RobertaForSequenceClassification, cfg)


@register("albert", "text")
def albert() -> Built:
    cfg = tf.AlbertConfig(embedding_size=32, num_labels=N_LABELS, **ENCODER)
    return _text(tf.AlbertForSequenceClassification, cfg)


@register("gpt2", "text")
def gpt2() -> Built:
    cfg = tf.GPT2Config(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_inner=128,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    # an explicit mask: without one transformers 5 probes position ids for packed sequences with
    # torch.diff, which the TorchScript exporter cannot export
    return _text(tf.GPT2LMHeadModel, cfg, with_mask=True)


@register("opt", "text")
def opt() -> Built:
    cfg = tf.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=128,
        max_position_embeddings=64,
        word_embed_proj_dim=64,
    )
    return _text(tf.OPTForCausalLM, cfg)


@register("llama", "text")
def llama() -> Built:
    # grouped-query attention: 4 query heads share 2 key/value heads
    cfg = tf.LlamaConfig(num_key_value_heads=2, **ENCODER)
    return _text(tf.LlamaForCausalLM, cfg, with_mask=True)  # mask: see gpt2


@register("wav2vec2", "audio")
def wav2vec2() -> Built:
    cfg = tf.Wav2Vec2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 2, 2),
        conv_kernel=(10, 3, 3),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        num_labels=N_LABELS,
        classifier_proj_size=32,
    )
    model = randomize_norm_stats(_make(tf.Wav2Vec2ForSequenceClassification, cfg))
    g = torch.Generator().manual_seed(1)
    inputs = {"input_values": torch.randn(1, 1600, generator=g)}
    names = list(inputs)
    return Built(OutputSelect(model, names, ["logits"]), inputs, names, ["logits"])
