"""Model types trgl_hf refuses, each with the reason a user reads (a class of a registered family that is not one of
its task classes is answered by `registry.CLASS_HINTS`)."""

from __future__ import annotations

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
    "hiera": "its stages cannot be cut exactly: Hiera unrolls its tokens in an order that depends on the number of "
    "stages (mask-unit attention windows and query pooling read that order), so a Hiera truncated after a module "
    "does not compute what the module's first blocks compute, and no stage would reproduce its head",
    "gemma3": "the multimodal Gemma 3 is not cut; its text decoder is (`Gemma3ForCausalLM`, model_type 'gemma3_text')",
    "falcon_mamba": "its blocks are state-space mixers without the attention/MLP residual branches trgl_hf penalises",
    "falcon_h1": "its blocks mix attention with state-space layers in parallel, which trgl_hf does not cut",
    "trgl": "it is already a TRGLModel: pass the original task model (or load a stage with its Auto class)",
}
