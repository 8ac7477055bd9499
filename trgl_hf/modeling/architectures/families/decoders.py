"""Decoder language models of the registry (GPT-2, Llama and their relatives): one `ArchitectureSpec` per family."""

from __future__ import annotations

from typing import Any

from ..spec import ArchitectureSpec, Layout, PostNorm, StreamPoints, norm_then_pooler
from ..transformer import TransformerCutter
from .common import CAUSAL_LM, CLASSIFICATION, lm_and_classifier, refuse_cross_attention


def _opt_layout(config: Any) -> Layout:
    if config.do_layer_norm_before:
        return StreamPoints(("final_layer_norm",))
    return PostNorm(("self_attn_layer_norm", "final_layer_norm"))


def _neox_layout(config: Any) -> Layout:
    return StreamPoints(() if config.use_parallel_residual else ("post_attention_layernorm",))


def _falcon_layout(config: Any) -> Layout:
    parallel = config.parallel_attn or config.new_decoder_architecture
    return StreamPoints(() if parallel else ("post_attention_layernorm",))


def _refuse_falcon(config: Any) -> str | None:
    if config.alibi and getattr(config, "_attn_implementation", None) != "sdpa":
        return (
            "`alibi=True` is only exact with `attn_implementation='sdpa'`: transformers' eager Falcon attention adds "
            "ALiBi twice (to the scores and again through the mask), so a stage reloaded with the default SDPA "
            "attention would not reproduce its head; load the model with `attn_implementation='sdpa'`"
        )
    return None


def _refuse_bloom(config: Any) -> str | None:
    if config.apply_residual_connection_post_layernorm:
        return (
            "`apply_residual_connection_post_layernorm=True` adds each branch to the normalised stream (the "
            "LayerNorm's output), not to the block's input, so the stream has no residual update to penalise"
        )
    return None


PARALLEL = "the block's single update: attention + MLP computed in parallel from one norm"
PARALLEL_OR_EACH = "with `{}` the block's single update attention + MLP; otherwise each branch"


class GPTNeoCutter(TransformerCutter):
    """GPT-Neo: a stage's configuration lists the attention type (global / local) of its own layers only."""

    def stage_config(self, num_blocks: int) -> Any:
        config = super().stage_config(num_blocks)
        kinds = list(config.attention_layers)[:num_blocks]
        config.attention_types = [[[kind], 1] for kind in kinds]
        config.attention_layers = kinds
        return config


DECODER = dict(
    adapter=TransformerCutter,
    blocks="layers",
    layout=StreamPoints(("post_attention_layernorm",)),
    tail_names=("norm",),
    tail=norm_then_pooler("norm"),
    penalised="attention and MLP branches (the stream's change across each sub-layer)",
)
"""Llama's block structure: pre-norm attention then MLP in `model.layers`, a final `norm`."""

DECODERS = (
    ArchitectureSpec(
        "GPT-2", ("gpt2",), TransformerCutter,
        {"GPT2LMHeadModel": CAUSAL_LM, "GPT2ForSequenceClassification": CLASSIFICATION},
        blocks="h", layout=StreamPoints(("ln_2",)), tail_names=("ln_f",), tail=norm_then_pooler("ln_f"),
        check=refuse_cross_attention,
        penalised="attention and MLP branches (the stream's change across each sub-layer)",
    ),
    ArchitectureSpec(
        "GPT-NeoX", ("gpt_neox",), TransformerCutter, lm_and_classifier("GPTNeoX"),
        blocks="layers", layout=_neox_layout, tail_names=("final_layer_norm",),
        tail=norm_then_pooler("final_layer_norm"),
        penalised="with `use_parallel_residual` the block's single update attention + MLP; otherwise each branch",
    ),
    ArchitectureSpec(
        "OPT", ("opt",), TransformerCutter, lm_and_classifier("OPT"),
        blocks="decoder.layers", layout=_opt_layout,
        tail_names=("decoder.final_layer_norm", "decoder.project_out"),
        tail=norm_then_pooler("decoder.final_layer_norm", "decoder.project_out"),
        penalised="attention and MLP branches (pre-LN), or each branch before its LayerNorm (post-LN OPT-350m)",
    ),
    ArchitectureSpec("Llama", ("llama",), classes=lm_and_classifier("Llama"), **DECODER),
    ArchitectureSpec("Mistral", ("mistral",), classes=lm_and_classifier("Mistral"), **DECODER),
    ArchitectureSpec("Qwen2", ("qwen2",), classes=lm_and_classifier("Qwen2"), **DECODER),
    ArchitectureSpec("Qwen3", ("qwen3",), classes=lm_and_classifier("Qwen3"), **DECODER),
    ArchitectureSpec("Gemma", ("gemma",), classes=lm_and_classifier("Gemma"), **DECODER),
    ArchitectureSpec("Phi-3", ("phi3",), classes=lm_and_classifier("Phi3"), **DECODER),
    ArchitectureSpec(
        "Gemma2", ("gemma2",), classes=lm_and_classifier("Gemma2"),
        **{**DECODER, "layout": StreamPoints(("pre_feedforward_layernorm",)),
           "penalised": "attention and MLP branches after their post-norms (sandwich norms)"},
    ),
    ArchitectureSpec(
        "OLMo2", ("olmo2",), classes=lm_and_classifier("Olmo2"),
        **{**DECODER, "layout": StreamPoints(("mlp",)),
           "penalised": "attention and MLP branches after their post-norms"},
    ),
    ArchitectureSpec(
        "StableLM", ("stablelm",), classes=lm_and_classifier("StableLm"),
        **{**DECODER, "layout": _neox_layout, "penalised": PARALLEL_OR_EACH.format("use_parallel_residual")},
    ),
    ArchitectureSpec("Starcoder2", ("starcoder2",), classes=lm_and_classifier("Starcoder2"), **DECODER),
    ArchitectureSpec("OLMo", ("olmo",), classes=lm_and_classifier("Olmo"), **DECODER),
    ArchitectureSpec("SmolLM3", ("smollm3",), classes=lm_and_classifier("SmolLM3"), **DECODER),
    ArchitectureSpec("GLM", ("glm",), classes=lm_and_classifier("Glm"), **DECODER),
    ArchitectureSpec(
        "GPT-Neo", ("gpt_neo",), GPTNeoCutter, lm_and_classifier("GPTNeo"),
        blocks="h", layout=StreamPoints(("ln_2",)), tail_names=("ln_f",), tail=norm_then_pooler("ln_f"),
        penalised="attention and MLP branches (the stream's change across each sub-layer)",
    ),
    ArchitectureSpec(
        "Gemma3", ("gemma3_text",),
        classes={"Gemma3ForCausalLM": CAUSAL_LM, "Gemma3TextForSequenceClassification": CLASSIFICATION},
        **{**DECODER, "layout": StreamPoints(("pre_feedforward_layernorm",)),
           "penalised": "attention and MLP branches after their post-norms (sandwich norms)"},
    ),
    ArchitectureSpec(
        "Granite", ("granite",), classes={"GraniteForCausalLM": CAUSAL_LM},
        **{**DECODER, "penalised": "attention and MLP branches as added to the stream, after `residual_multiplier`"},
    ),
    ArchitectureSpec(
        "Phi", ("phi",), classes=lm_and_classifier("Phi"),
        **{**DECODER, "layout": StreamPoints(), "tail_names": ("final_layernorm",),
           "tail": norm_then_pooler("final_layernorm"), "penalised": PARALLEL},
    ),
    ArchitectureSpec(
        "GPT-J", ("gptj",), TransformerCutter, lm_and_classifier("GPTJ"),
        blocks="h", layout=StreamPoints(), tail_names=("ln_f",), tail=norm_then_pooler("ln_f"), penalised=PARALLEL,
    ),
    ArchitectureSpec(
        "Cohere", ("cohere",), classes={"CohereForCausalLM": CAUSAL_LM},
        **{**DECODER, "layout": StreamPoints(), "penalised": PARALLEL},
    ),
    ArchitectureSpec(
        "BLOOM", ("bloom",), TransformerCutter, lm_and_classifier("Bloom"),
        blocks="h", layout=StreamPoints(("post_attention_layernorm",)), tail_names=("ln_f",),
        tail=norm_then_pooler("ln_f"), check=_refuse_bloom,
        penalised="attention and MLP branches (the stream's change across each sub-layer; ALiBi is an input)",
    ),
    ArchitectureSpec(
        "Falcon", ("falcon",), TransformerCutter, lm_and_classifier("Falcon"),
        blocks="h", layout=_falcon_layout, tail_names=("ln_f",), tail=norm_then_pooler("ln_f"),
        check=_refuse_falcon,
        penalised="with `parallel_attn` or `new_decoder_architecture` the block's single update attention + MLP; "
        "otherwise each branch",
    ),
)  # fmt: skip
