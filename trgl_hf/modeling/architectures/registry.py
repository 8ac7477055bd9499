"""The architectures trgl_hf trains exactly, and the answer for every other model.

Each supported architecture is one [`ArchitectureSpec`], keyed by its `model_type`: which cutter cuts it, where its
blocks are, how each block adds its branches to the residual stream (what the transport term penalises), what runs
after the last block, and which task classes are supported. A model is cut only when its `model_type` and class are
registered and its configuration passes the entry's checks; any other model is refused before anything is trained,
with a message that names it, says why, and lists what is supported.

Registering a new architecture: add one entry to `_ENTRIES` (and, for a new block structure, a cutter file); the
parametrised tests of `tests/unit/modeling/architectures/test_registry.py` then check its transport term against hooks
on the uncut model and its stages against the TRGL model's heads.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .resnet import ResNetCutter
from .spec import ArchitectureSpec, Layout, PostNorm, StreamPoints, norm_then_first_token, norm_then_pooler
from .staged import ConvNextCutter, SwinCutter, convnext_tail, swin_tail
from .transformer import TransformerCutter

CLASSIFICATION, CAUSAL_LM = "classification", "causal_lm"


def _opt_layout(config: Any) -> Layout:
    if config.do_layer_norm_before:
        return StreamPoints(("final_layer_norm",))
    return PostNorm(("self_attn_layer_norm", "final_layer_norm"))


def _neox_layout(config: Any) -> Layout:
    return StreamPoints(() if config.use_parallel_residual else ("post_attention_layernorm",))


def _refuse_cross_attention(config: Any) -> str | None:
    if getattr(config, "add_cross_attention", False) or getattr(config, "is_decoder", False):
        return "it is configured as a decoder with cross-attention (`add_cross_attention` / `is_decoder`)"
    if getattr(config, "chunk_size_feed_forward", 0):
        return "`chunk_size_feed_forward > 0` runs the feed-forward branch in chunks; set it to 0"
    return None


def _refuse_deberta(config: Any) -> str | None:
    if getattr(config, "conv_kernel_size", 0):
        return "its convolution after the first layer (`conv_kernel_size > 0`) runs between blocks"
    return _refuse_cross_attention(config)


def _lm_and_classifier(prefix: str, lm_name: str | None = None) -> dict[str, str]:
    return {lm_name or f"{prefix}ForCausalLM": CAUSAL_LM, f"{prefix}ForSequenceClassification": CLASSIFICATION}


_BERT_LIKE = dict(
    adapter=TransformerCutter,
    blocks="encoder.layer",
    layout=PostNorm(("attention.output.LayerNorm", "output.LayerNorm")),
    tail_names=("pooler",),
    check=_refuse_cross_attention,
    penalised="attention and feed-forward branches before their post-LayerNorm",
)
_DECODER = dict(
    adapter=TransformerCutter,
    blocks="layers",
    layout=StreamPoints(("post_attention_layernorm",)),
    tail_names=("norm",),
    tail=norm_then_pooler("norm"),
    penalised="attention and MLP branches (the stream's change across each sub-layer)",
)
_VIT_LIKE = dict(
    adapter=TransformerCutter,
    blocks="layers",
    layout=StreamPoints(("layernorm_after",)),
    tail_names=("layernorm", "pooler"),
    tail=norm_then_pooler("layernorm"),
    penalised="attention and MLP branches (the stream's change across each sub-layer)",
    fixed_image_size=True,
)

_ENTRIES = (
    ArchitectureSpec("BERT", ("bert",), classes={"BertForSequenceClassification": CLASSIFICATION}, **_BERT_LIKE),
    ArchitectureSpec("RoBERTa", ("roberta",), classes={"RobertaForSequenceClassification": CLASSIFICATION},
                     **_BERT_LIKE),
    ArchitectureSpec("XLM-RoBERTa", ("xlm-roberta",),
                     classes={"XLMRobertaForSequenceClassification": CLASSIFICATION}, **_BERT_LIKE),
    ArchitectureSpec("ELECTRA", ("electra",), classes={"ElectraForSequenceClassification": CLASSIFICATION},
                     **_BERT_LIKE),
    ArchitectureSpec(
        "DistilBERT", ("distilbert",), TransformerCutter, {"DistilBertForSequenceClassification": CLASSIFICATION},
        blocks="transformer.layer", layout=PostNorm(("sa_layer_norm", "output_layer_norm")),
        penalised="attention and feed-forward branches before their post-LayerNorm",
    ),
    ArchitectureSpec(
        "DeBERTa-v2", ("deberta-v2",), TransformerCutter, {"DebertaV2ForSequenceClassification": CLASSIFICATION},
        blocks="encoder.layer", layout=PostNorm(("attention.output.LayerNorm", "output.LayerNorm")),
        check=_refuse_deberta,
        penalised="attention and feed-forward branches before their post-LayerNorm (the relative position "
        "embeddings, shared by every layer, are trained with module 1)",
    ),
    ArchitectureSpec(
        "ModernBERT", ("modernbert",), TransformerCutter, {"ModernBertForSequenceClassification": CLASSIFICATION},
        blocks="layers", layout=StreamPoints(("mlp_norm",)), tail_names=("final_norm",),
        tail=norm_then_pooler("final_norm"),
        penalised="attention and MLP branches (the stream's change across each sub-layer)",
    ),
    ArchitectureSpec(
        "GPT-2", ("gpt2",), TransformerCutter,
        {"GPT2LMHeadModel": CAUSAL_LM, "GPT2ForSequenceClassification": CLASSIFICATION},
        blocks="h", layout=StreamPoints(("ln_2",)), tail_names=("ln_f",), tail=norm_then_pooler("ln_f"),
        check=_refuse_cross_attention,
        penalised="attention and MLP branches (the stream's change across each sub-layer)",
    ),
    ArchitectureSpec(
        "GPT-NeoX", ("gpt_neox",), TransformerCutter, _lm_and_classifier("GPTNeoX"),
        blocks="layers", layout=_neox_layout, tail_names=("final_layer_norm",),
        tail=norm_then_pooler("final_layer_norm"),
        penalised="with `use_parallel_residual` the block's single update attention + MLP; otherwise each branch",
    ),
    ArchitectureSpec(
        "OPT", ("opt",), TransformerCutter, _lm_and_classifier("OPT"),
        blocks="decoder.layers", layout=_opt_layout,
        tail_names=("decoder.final_layer_norm", "decoder.project_out"),
        tail=norm_then_pooler("decoder.final_layer_norm", "decoder.project_out"),
        penalised="attention and MLP branches (pre-LN), or each branch before its LayerNorm (post-LN OPT-350m)",
    ),
    ArchitectureSpec("Llama", ("llama",), classes=_lm_and_classifier("Llama"), **_DECODER),
    ArchitectureSpec("Mistral", ("mistral",), classes=_lm_and_classifier("Mistral"), **_DECODER),
    ArchitectureSpec("Qwen2", ("qwen2",), classes=_lm_and_classifier("Qwen2"), **_DECODER),
    ArchitectureSpec("Qwen3", ("qwen3",), classes=_lm_and_classifier("Qwen3"), **_DECODER),
    ArchitectureSpec("Gemma", ("gemma",), classes=_lm_and_classifier("Gemma"), **_DECODER),
    ArchitectureSpec("Phi-3", ("phi3",), classes=_lm_and_classifier("Phi3"), **_DECODER),
    ArchitectureSpec(
        "Gemma2", ("gemma2",), classes=_lm_and_classifier("Gemma2"),
        **{**_DECODER, "layout": StreamPoints(("pre_feedforward_layernorm",)),
           "penalised": "attention and MLP branches after their post-norms (sandwich norms)"},
    ),
    ArchitectureSpec(
        "OLMo2", ("olmo2",), classes=_lm_and_classifier("Olmo2"),
        **{**_DECODER, "layout": StreamPoints(("mlp",)),
           "penalised": "attention and MLP branches after their post-norms"},
    ),
    ArchitectureSpec("ViT", ("vit",), classes={"ViTForImageClassification": CLASSIFICATION}, **_VIT_LIKE),
    ArchitectureSpec("DeiT", ("deit",), classes={"DeiTForImageClassification": CLASSIFICATION}, **_VIT_LIKE),
    ArchitectureSpec(
        "DINOv2", ("dinov2",), TransformerCutter, {"Dinov2ForImageClassification": CLASSIFICATION},
        blocks="encoder.layer", layout=StreamPoints(("norm2",)), tail_names=("layernorm",),
        tail=norm_then_first_token("layernorm"),
        penalised="attention and MLP branches after layer scale (the stream's change across each sub-layer)",
    ),
    ArchitectureSpec(
        "Swin", ("swin",), SwinCutter, {"SwinForImageClassification": CLASSIFICATION},
        layout=StreamPoints(("layernorm_after",)), tail_names=("layernorm", "pooler"), tail=swin_tail,
        penalised="attention and MLP branches; patch merging is not penalised",
    ),
    ArchitectureSpec(
        "Swinv2", ("swinv2",), SwinCutter, {"Swinv2ForImageClassification": CLASSIFICATION},
        layout=StreamPoints(("intermediate",)), tail_names=("layernorm", "pooler"), tail=swin_tail,
        penalised="attention and MLP branches after their post-norms; patch merging is not penalised",
    ),
    ArchitectureSpec(
        "ConvNeXt", ("convnext",), ConvNextCutter, {"ConvNextForImageClassification": CLASSIFICATION},
        tail_names=("layernorm",), tail=convnext_tail,
        penalised="each block's branch after layer scale; stem and downsampling layers are not penalised",
    ),
    ArchitectureSpec(
        "ConvNeXt V2", ("convnextv2",), ConvNextCutter, {"ConvNextV2ForImageClassification": CLASSIFICATION},
        tail_names=("layernorm",), tail=convnext_tail,
        penalised="each block's branch; stem and downsampling layers are not penalised",
    ),
    ArchitectureSpec(
        "ResNet", ("resnet",), ResNetCutter, {"ResNetForImageClassification": CLASSIFICATION},
        penalised="each block's convolutional branch, downsampling blocks included (fused with the branch's last "
        "BatchNorm: recomputed in backward, nothing kept); the stem is not",
    ),
    ArchitectureSpec(
        "CIFAR ResNet", ("cifar_resnet",), ResNetCutter, {"CifarResNetForImageClassification": CLASSIFICATION},
        penalised="each block's convolutional branch, downsampling blocks included; the stem is not",
    ),
)  # fmt: skip

REGISTRY: dict[str, ArchitectureSpec] = {model_type: spec for spec in _ENTRIES for model_type in spec.model_types}

KNOWN_REFUSALS = {
    "albert": "ALBERT shares one block's weights across its whole depth, so its layers cannot train as separate "
    "modules",
    "t5": "encoder-decoder models are not cut (the decoder reads every encoder layer through cross-attention)",
    "mt5": "encoder-decoder models are not cut",
    "bart": "encoder-decoder models are not cut",
    "mbart": "encoder-decoder models are not cut",
    "pegasus": "encoder-decoder models are not cut",
    "marian": "encoder-decoder models are not cut",
    "encoder-decoder": "encoder-decoder models are not cut",
    "mamba": "its blocks are state-space mixers without the attention/MLP residual branches trgl_hf penalises",
    "mamba2": "its blocks are state-space mixers without the attention/MLP residual branches trgl_hf penalises",
    "efficientnet": "its inverted-residual blocks change width and skip the residual in some blocks",
    "mobilenet_v2": "its inverted-residual blocks change width and skip the residual in some blocks",
    "trgl": "it is already a TRGLModel: pass the original task model (or load a stage with its Auto class)",
}
CLASS_HINTS = {
    "ForMaskedLM": "masked-LM heads are not a supported task",
    "WithTeacher": "its two heads (class token and distillation token) are averaged; use `DeiTForImageClassification`",
    "ForTokenClassification": "token classification is not a supported task",
    "ForQuestionAnswering": "question answering is not a supported task",
    "ForMultipleChoice": "multiple choice is not a supported task",
}


def supported_architectures() -> dict[str, list[str]]:
    """Every supported architecture's task classes, by `model_type`.

    Returns:
        `dict[str, list[str]]`: e.g. `{"bert": ["BertForSequenceClassification"], ...}`.

    Example:
    ```python
    >>> from trgl_hf import supported_architectures
    >>> "GPT2LMHeadModel" in supported_architectures()["gpt2"]
    True
    ```
    """
    return {model_type: sorted(spec.classes) for model_type, spec in REGISTRY.items()}


def _supported_text() -> str:
    return "; ".join(f"{spec.name}: {', '.join(sorted(spec.classes))}" for spec in _ENTRIES)


def architecture_of(model: nn.Module) -> ArchitectureSpec:
    """The registry entry of a task model, or a `ValueError` naming it, saying why, and listing what is supported.

    Args:
        model (`nn.Module`): a transformers task model (or this library's CIFAR ResNet).

    Returns:
        [`ArchitectureSpec`]

    Raises:
        `ValueError`: the model is not registered, its class is not a supported task class, or its configuration
            cannot be trained exactly.
    """
    class_name = type(model).__name__
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    spec = REGISTRY.get(model_type)
    supported = f"Supported: {_supported_text()}."
    if spec is None:
        reason = KNOWN_REFUSALS.get(model_type, "its architecture is not in trgl_hf's registry of architectures whose "
                                    "residual branches and heads are verified")  # fmt: skip
        what = f"model_type {model_type!r}" if model_type else "not a transformers model"
        raise ValueError(f"trgl_hf cannot train {class_name} ({what}): {reason}. {supported}")
    if class_name not in spec.classes:
        hint = next((text for suffix, text in CLASS_HINTS.items() if suffix in class_name), None)
        if hint is None and getattr(model, "base_model", model) is model:
            hint = "it is a bare backbone, and trgl_hf needs the task model (its head is copied into every module)"
        hint = hint or "its task head is not one trgl_hf reproduces exactly"
        raise ValueError(
            f"trgl_hf cannot train {class_name}: {hint}. {spec.name} is supported through "
            f"{', '.join(sorted(spec.classes))}."
        )
    reason = spec.check(config) if spec.check is not None else None
    decoder_classifier = class_name.endswith("ForSequenceClassification") and CAUSAL_LM in spec.classes.values()
    if reason is None and decoder_classifier and getattr(config, "pad_token_id", None) is None:
        reason = ("a decoder classifier reads the last non-padding token and needs `config.pad_token_id` "
                  "(set it, e.g. to the tokenizer's pad or eos token id)")  # fmt: skip
    if reason is not None:
        raise ValueError(f"trgl_hf cannot train this {class_name}: {reason}.")
    return spec


def architecture_named(class_name: str, model_type: str) -> ArchitectureSpec:
    """The registry entry for a saved TRGL model's base class (`config.base_config`)."""
    spec = REGISTRY.get(model_type)
    if spec is None or class_name not in spec.classes:
        raise ValueError(f"{class_name} (model_type {model_type!r}) is not a supported architecture.")
    return spec


def support_table() -> str:
    """The guide's table of supported architectures (`docs/architectures.md`; a test keeps the page equal to it)."""
    rows = ["| architecture | task classes | what the transport term penalises |", "| --- | --- | --- |"]
    for spec in _ENTRIES:
        classes = ", ".join(f"`{name}`" for name in sorted(spec.classes))
        rows.append(f"| {spec.name} | {classes} | {spec.penalised} |")
    return "\n".join(rows)


__all__ = [
    "REGISTRY",
    "ArchitectureSpec",
    "architecture_named",
    "architecture_of",
    "support_table",
    "supported_architectures",
]
