"""Decoders of the registry's conformance tests (`test_registry.py`), one row per task class:
class name -> (config class, config kwargs, ground-truth branch modules per block[, how branches combine]).

Ground truth: the output of each named submodule (first element of a tuple) is exactly the tensor its branch adds
to the residual stream; "sum" adds them into one stream update (parallel attention + MLP).
"""

from .cases_common import DECODER, TEXT

DECODERS_CASES = {
    "GPT2LMHeadModel": ("GPT2Config", dict(vocab_size=40, n_embd=16, n_layer=4, n_head=2, n_positions=64, pad_token_id=0), ("attn", "mlp")),
    "GPT2ForSequenceClassification": ("GPT2Config", dict(vocab_size=40, n_embd=16, n_layer=4, n_head=2, n_positions=64, pad_token_id=0), ("attn", "mlp")),
    "GPTNeoXForCausalLM": ("GPTNeoXConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=0), ("post_attention_dropout", "post_mlp_dropout"), "sum"),
    "GPTNeoXForSequenceClassification": ("GPTNeoXConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=0, use_parallel_residual=False), ("post_attention_dropout", "post_mlp_dropout")),
    "OPTForCausalLM": ("OPTConfig", dict(vocab_size=40, hidden_size=16, num_attention_heads=2, num_hidden_layers=4, ffn_dim=32, max_position_embeddings=64, word_embed_proj_dim=8, pad_token_id=1), ("self_attn", "fc2")),
    "OPTForSequenceClassification": ("OPTConfig", dict(vocab_size=40, hidden_size=16, num_attention_heads=2, num_hidden_layers=4, ffn_dim=32, max_position_embeddings=64, word_embed_proj_dim=16, pad_token_id=1, do_layer_norm_before=False), ("self_attn", "fc2")),
    "LlamaForCausalLM": ("LlamaConfig", dict(DECODER, num_hidden_layers=4), ("self_attn", "mlp")),
    "LlamaForSequenceClassification": ("LlamaConfig", dict(DECODER, num_hidden_layers=4), ("self_attn", "mlp")),
    "MistralForCausalLM": ("MistralConfig", dict(DECODER, num_hidden_layers=4, sliding_window=4), ("self_attn", "mlp")),
    "MistralForSequenceClassification": ("MistralConfig", dict(DECODER, num_hidden_layers=4, sliding_window=4), ("self_attn", "mlp")),
    "Qwen2ForCausalLM": ("Qwen2Config", dict(DECODER, num_hidden_layers=4, use_sliding_window=True, sliding_window=4, max_window_layers=1), ("self_attn", "mlp")),
    "Qwen2ForSequenceClassification": ("Qwen2Config", dict(DECODER, num_hidden_layers=4), ("self_attn", "mlp")),
    "Qwen3ForCausalLM": ("Qwen3Config", dict(DECODER, num_hidden_layers=4, head_dim=8, use_sliding_window=True, sliding_window=4, max_window_layers=3), ("self_attn", "mlp")),
    "Qwen3ForSequenceClassification": ("Qwen3Config", dict(DECODER, num_hidden_layers=4, head_dim=8), ("self_attn", "mlp")),
    "GemmaForCausalLM": ("GemmaConfig", dict(DECODER, num_hidden_layers=4, head_dim=8), ("self_attn", "mlp")),
    "GemmaForSequenceClassification": ("GemmaConfig", dict(DECODER, num_hidden_layers=4, head_dim=8), ("self_attn", "mlp")),
    "Gemma2ForCausalLM": ("Gemma2Config", dict(DECODER, num_hidden_layers=4, head_dim=8, sliding_window=4), ("post_attention_layernorm", "post_feedforward_layernorm")),
    "Gemma2ForSequenceClassification": ("Gemma2Config", dict(DECODER, num_hidden_layers=4, head_dim=8, sliding_window=4), ("post_attention_layernorm", "post_feedforward_layernorm")),
    "Phi3ForCausalLM": ("Phi3Config", dict(DECODER, num_hidden_layers=4), ("resid_attn_dropout", "resid_mlp_dropout")),
    "Phi3ForSequenceClassification": ("Phi3Config", dict(DECODER, num_hidden_layers=4), ("resid_attn_dropout", "resid_mlp_dropout")),
    "Olmo2ForCausalLM": ("Olmo2Config", dict(DECODER, num_hidden_layers=4), ("post_attention_layernorm", "post_feedforward_layernorm")),
    "Olmo2ForSequenceClassification": ("Olmo2Config", dict(DECODER, num_hidden_layers=4), ("post_attention_layernorm", "post_feedforward_layernorm")),
    "StableLmForCausalLM": ("StableLmConfig", dict(DECODER, num_hidden_layers=4, use_parallel_residual=True, qk_layernorm=True), ("self_attn", "dropout"), "sum"),
    "StableLmForSequenceClassification": ("StableLmConfig", dict(DECODER, num_hidden_layers=4, use_qkv_bias=True), ("self_attn", "dropout")),
    "Starcoder2ForCausalLM": ("Starcoder2Config", dict(DECODER, num_hidden_layers=4, sliding_window=4), ("self_attn", "mlp")),
    "Starcoder2ForSequenceClassification": ("Starcoder2Config", dict(DECODER, num_hidden_layers=4), ("self_attn", "mlp")),
    "OlmoForCausalLM": ("OlmoConfig", dict(DECODER, num_hidden_layers=4, clip_qkv=0.5), ("self_attn", "mlp")),
    "OlmoForSequenceClassification": ("OlmoConfig", dict(DECODER, num_hidden_layers=4), ("self_attn", "mlp")),
    "SmolLM3ForCausalLM": ("SmolLM3Config", dict(DECODER, num_hidden_layers=4, no_rope_layer_interval=2, use_sliding_window=True, sliding_window=4), ("self_attn", "mlp")),
    "SmolLM3ForSequenceClassification": ("SmolLM3Config", dict(DECODER, num_hidden_layers=4, no_rope_layer_interval=2), ("self_attn", "mlp")),
    "GlmForCausalLM": ("GlmConfig", dict(DECODER, num_hidden_layers=4, head_dim=8), ("self_attn", "mlp")),
    "GlmForSequenceClassification": ("GlmConfig", dict(DECODER, num_hidden_layers=4, head_dim=8), ("self_attn", "mlp")),
    "GPTNeoForCausalLM": ("GPTNeoConfig", dict(TEXT, num_layers=4, attention_types=[[["global", "local"], 2]], window_size=3, pad_token_id=0), ("attn", "mlp")),
    "GPTNeoForSequenceClassification": ("GPTNeoConfig", dict(TEXT, num_layers=4, attention_types=[[["local", "global"], 2]], window_size=3, pad_token_id=0), ("attn", "mlp")),
    "Gemma3ForCausalLM": ("Gemma3TextConfig", dict(DECODER, num_hidden_layers=4, head_dim=8, sliding_window=3, layer_types=["sliding_attention", "full_attention"] * 2, final_logit_softcapping=5.0, attn_logit_softcapping=3.0, query_pre_attn_scalar=6), ("post_attention_layernorm", "post_feedforward_layernorm")),
    "Gemma3TextForSequenceClassification": ("Gemma3TextConfig", dict(DECODER, num_hidden_layers=4, head_dim=8, sliding_window=3, layer_types=["full_attention", "sliding_attention"] * 2), ("post_attention_layernorm", "post_feedforward_layernorm")),
    "GraniteForCausalLM": ("GraniteConfig", dict(DECODER, num_hidden_layers=4, embedding_multiplier=3.0, attention_multiplier=0.2, logits_scaling=4.0), ("self_attn", "mlp")),  # residual_multiplier != 1: test_decoder_multipliers.py
    "PhiForCausalLM": ("PhiConfig", dict(DECODER, num_hidden_layers=4, qk_layernorm=True), ("self_attn", "mlp"), "sum"),
    "PhiForSequenceClassification": ("PhiConfig", dict(DECODER, num_hidden_layers=4), ("self_attn", "mlp"), "sum"),
    "GPTJForCausalLM": ("GPTJConfig", dict(TEXT, n_layer=4, rotary_dim=4, n_inner=32, pad_token_id=0), ("attn", "mlp"), "sum"),
    "GPTJForSequenceClassification": ("GPTJConfig", dict(TEXT, n_layer=4, rotary_dim=4, pad_token_id=0), ("attn", "mlp"), "sum"),
    "CohereForCausalLM": ("CohereConfig", dict(DECODER, num_hidden_layers=4, logit_scale=0.5, use_qk_norm=True), ("self_attn", "mlp"), "sum"),
    "BloomForCausalLM": ("BloomConfig", dict(TEXT, n_layer=4, pad_token_id=0), ("self_attention.dense", "mlp.dense_4h_to_h")),
    "BloomForSequenceClassification": ("BloomConfig", dict(TEXT, n_layer=4, pad_token_id=0), ("self_attention.dense", "mlp.dense_4h_to_h")),
    "FalconForCausalLM": ("FalconConfig", dict(TEXT, num_hidden_layers=4, new_decoder_architecture=True, num_kv_heads=1, pad_token_id=0), ("self_attention", "mlp"), "sum"),
    "FalconForSequenceClassification": ("FalconConfig", dict(TEXT, num_hidden_layers=4, parallel_attn=False, bias=True, pad_token_id=0), ("self_attention", "mlp")),  # ALiBi (SDPA only): test_decoder_variants.py
}  # fmt: skip

# Train mode (`test_decoder_variants.py`): class -> (config class, kwargs with dropout on the residual branches, the
# modules whose outputs (dropout included) are added, "sum" or None); 4 layers and pad_token_id=0 are added.
DROPOUT_CASES = {
    "PhiForCausalLM": ("PhiConfig", dict(DECODER, resid_pdrop=0.3, embd_pdrop=0.2), ("resid_dropout",), "sum"),
    "GPTJForCausalLM": ("GPTJConfig", dict(TEXT, rotary_dim=4, resid_pdrop=0.3, embd_pdrop=0.2), ("attn", "mlp"), "sum"),
    "StableLmForCausalLM": ("StableLmConfig", dict(DECODER, use_parallel_residual=True, hidden_dropout=0.3), ("self_attn", "dropout"), "sum"),
    "Starcoder2ForCausalLM": ("Starcoder2Config", dict(DECODER, residual_dropout=0.3, embedding_dropout=0.2), ("self_attn", "mlp"), None),
    "GPTNeoForCausalLM": ("GPTNeoConfig", dict(TEXT, attention_types=[[["global", "local"], 2]], window_size=3, resid_dropout=0.3), ("attn", "mlp"), None),
}  # fmt: skip
