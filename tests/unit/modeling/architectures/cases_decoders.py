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
}  # fmt: skip
