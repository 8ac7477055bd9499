"""Model builders and fixed random batches of the benchmarks (the same weights for a given seed in every mode)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import trgl_hf

# ---------------------------------------------------------------------------- CIFAR ResNet


def build_resnet(depth: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = trgl_hf.CifarResNetConfig.from_depth(depth, num_labels=10)
    return trgl_hf.CifarResNetForImageClassification(config).train()


def build_trgl_resnet(
    depth: int, num_modules: int, policy: str, seed: int = 0, use_transport: bool = True, aux_head: str = "conv"
) -> trgl_hf.TRGLModel:
    config = trgl_hf.TRGLConfig(
        num_modules=num_modules,
        split_policy=policy,
        tau=10.0,
        aux_head=aux_head,
        image_size=32,
        use_transport=use_transport,
    )
    return trgl_hf.TRGLModel.from_base(build_resnet(depth, seed), config).train()


def resnet_blocks(base: nn.Module) -> list[nn.Module]:
    return [layer for stage in base.resnet.encoder.stages for layer in stage.layers]


def module_split(depth: int, num_modules: int, policy: str, seed: int = 0) -> list[int]:
    return list(build_trgl_resnet(depth, num_modules, policy, seed).config.split)


def random_images(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """32x32 random images and labels, the same for a given batch size (memory does not depend on the values)."""
    generator = torch.Generator().manual_seed(batch_size)
    x = torch.randn(batch_size, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (batch_size,), generator=generator)
    return x, y


def make_sgd(params) -> torch.optim.Optimizer:
    """SGD(lr 0.01, momentum 0.9, weight decay 5e-4) with its momentum buffers created now (steady-state step)."""
    from .memory import init_momentum

    optimizer = torch.optim.SGD(list(params), lr=0.01, momentum=0.9, weight_decay=5e-4)
    init_momentum(optimizer)
    return optimizer


# ---------------------------------------------------------------------------- transformers (random init)

BERT_BASE = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    num_labels=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
VIT_SMALL = dict(
    image_size=32,
    patch_size=4,
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    intermediate_size=1536,
    num_labels=10,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
TINY = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=4)


def transformer_spec(name: str, quick: bool) -> dict[str, Any]:
    """Config kwargs and batch shape of each transformer (tiny versions in --quick mode)."""
    if name == "bert":
        config, batch = dict(BERT_BASE), {"batch_size": 16, "seq_len": 128}
        if quick:
            config.update(TINY, vocab_size=1000)
            batch = {"batch_size": 4, "seq_len": 16}
        label, model_class = "BERT-base encoder (BertForSequenceClassification)", "BertForSequenceClassification"
    elif name == "vit":
        config, batch = dict(VIT_SMALL), {"batch_size": 64}
        if quick:
            config.update(TINY)
            batch = {"batch_size": 4}
        label, model_class = "ViT (ViTForImageClassification, 32x32, patch 4)", "ViTForImageClassification"
    else:
        raise ValueError(name)
    return {"label": label, "class": model_class, "config": config, "batch": batch}


def build_transformer(spec: dict[str, Any], seed: int = 0) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    model_class = getattr(transformers, spec["class"])
    return model_class(model_class.config_class(**spec["config"])).train()


def transformer_batch(name: str, spec: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    batch, config = spec["batch"], spec["config"]
    if name == "bert":
        shape = (batch["batch_size"], batch["seq_len"])
        input_ids = torch.randint(0, config.get("vocab_size", 30522), shape, generator=generator)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    else:
        size = config["image_size"]
        inputs = {"pixel_values": torch.randn(batch["batch_size"], 3, size, size, generator=generator)}
    labels = torch.randint(0, config["num_labels"], (batch["batch_size"],), generator=generator)
    return inputs, labels


def build_gpt2(vocab_size: int, block_size: int, n_embd: int, n_layer: int, n_head: int, seed: int) -> nn.Module:
    """Character-level GPT-2 without dropout, untied embeddings (every TRGL module gets its own LM head)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=block_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    return GPT2LMHeadModel(config)
