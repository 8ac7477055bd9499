"""Task classes added by `families/task_classes.py` of the registry's conformance tests (`test_registry.py`), one row per task class:
class name -> (config class, config kwargs, ground-truth branch modules per block[, how branches combine]).

Ground truth: the output of each named submodule (first element of a tuple) is exactly the tensor its branch adds
to the residual stream; "sum" adds them into one stream update (parallel attention + MLP).
"""

from .cases_common import DECODER, TEXT
from .cases_mixtures import MIXTRAL, QWEN2_MOE

TASKS_CASES = {
    "BertForTokenClassification": ("BertConfig", dict(TEXT, num_hidden_layers=4), ("attention.output.dropout", "output.dropout")),
    "BertForMaskedLM": ("BertConfig", dict(TEXT, num_hidden_layers=4), ("attention.output.dropout", "output.dropout")),
    "RobertaForTokenClassification": ("RobertaConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "RobertaForMaskedLM": ("RobertaConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "XLMRobertaForTokenClassification": ("XLMRobertaConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "XLMRobertaForMaskedLM": ("XLMRobertaConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "ElectraForTokenClassification": ("ElectraConfig", dict(TEXT, num_hidden_layers=4, embedding_size=8), ("attention.output.dropout", "output.dropout")),
    "ElectraForMaskedLM": ("ElectraConfig", dict(TEXT, num_hidden_layers=4, embedding_size=8), ("attention.output.dropout", "output.dropout")),
    "DistilBertForTokenClassification": ("DistilBertConfig", dict(vocab_size=40, dim=16, n_layers=4, n_heads=2, hidden_dim=32, max_position_embeddings=64), ("attention", "ffn")),
    "DistilBertForMaskedLM": ("DistilBertConfig", dict(vocab_size=40, dim=16, n_layers=4, n_heads=2, hidden_dim=32, max_position_embeddings=64), ("attention", "ffn")),
    "DebertaV2ForTokenClassification": ("DebertaV2Config", dict(TEXT, num_hidden_layers=4, relative_attention=True, position_buckets=8, max_relative_positions=16, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False), ("attention.output.dropout", "output.dropout")),
    "DebertaV2ForMaskedLM": ("DebertaV2Config", dict(TEXT, num_hidden_layers=4, relative_attention=True, position_buckets=8, max_relative_positions=16, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False), ("attention.output.dropout", "output.dropout")),
    "ModernBertForTokenClassification": ("ModernBertConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, local_attention=4, classifier_pooling="mean"), ("attn", "mlp")),
    "ModernBertForMaskedLM": ("ModernBertConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, local_attention=4, classifier_pooling="mean"), ("attn", "mlp")),
    "LlamaForTokenClassification": ("LlamaConfig", dict(DECODER, num_hidden_layers=4), ("self_attn", "mlp")),
    "GPT2ForTokenClassification": ("GPT2Config", dict(vocab_size=40, n_embd=16, n_layer=4, n_head=2, n_positions=64, pad_token_id=0), ("attn", "mlp")),
    "Qwen2ForTokenClassification": ("Qwen2Config", dict(DECODER, num_hidden_layers=4), ("self_attn", "mlp")),
    "MistralForTokenClassification": ("MistralConfig", dict(DECODER, num_hidden_layers=4, sliding_window=4), ("self_attn", "mlp")),
    "CamembertForTokenClassification": ("CamembertConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "CamembertForMaskedLM": ("CamembertConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "Data2VecTextForTokenClassification": ("Data2VecTextConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "Data2VecTextForMaskedLM": ("Data2VecTextConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "ErnieForTokenClassification": ("ErnieConfig", dict(TEXT, num_hidden_layers=4, use_task_id=True, task_type_vocab_size=3), ("attention.output.dropout", "output.dropout")),
    "ErnieForMaskedLM": ("ErnieConfig", dict(TEXT, num_hidden_layers=4, use_task_id=True, task_type_vocab_size=3), ("attention.output.dropout", "output.dropout")),
    "RobertaPreLayerNormForTokenClassification": ("RobertaPreLayerNormConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "RobertaPreLayerNormForMaskedLM": ("RobertaPreLayerNormConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "XLMRobertaXLForTokenClassification": ("XLMRobertaXLConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dense")),
    "XLMRobertaXLForMaskedLM": ("XLMRobertaXLConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dense")),
    "MegatronBertForTokenClassification": ("MegatronBertConfig", dict(TEXT, num_hidden_layers=4), ("attention.output.dropout", "output.dropout")),
    "MegatronBertForMaskedLM": ("MegatronBertConfig", dict(TEXT, num_hidden_layers=4), ("attention.output.dropout", "output.dropout")),
    "MPNetForTokenClassification": ("MPNetConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.dropout", "output.dropout")),
    "MPNetForMaskedLM": ("MPNetConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.dropout", "output.dropout")),
    "GPTNeoXForTokenClassification": ("GPTNeoXConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=0, use_parallel_residual=False), ("post_attention_dropout", "post_mlp_dropout")),
    "Qwen3ForTokenClassification": ("Qwen3Config", dict(DECODER, num_hidden_layers=4, head_dim=8), ("self_attn", "mlp")),
    "GemmaForTokenClassification": ("GemmaConfig", dict(DECODER, num_hidden_layers=4, head_dim=8), ("self_attn", "mlp")),
    "Gemma2ForTokenClassification": ("Gemma2Config", dict(DECODER, num_hidden_layers=4, head_dim=8, sliding_window=4), ("post_attention_layernorm", "post_feedforward_layernorm")),
    "Phi3ForTokenClassification": ("Phi3Config", dict(DECODER, num_hidden_layers=4), ("resid_attn_dropout", "resid_mlp_dropout")),
    "StableLmForTokenClassification": ("StableLmConfig", dict(DECODER, num_hidden_layers=4, use_qkv_bias=True), ("self_attn", "dropout")),
    "Starcoder2ForTokenClassification": ("Starcoder2Config", dict(DECODER, num_hidden_layers=4), ("self_attn", "mlp")),
    "SmolLM3ForTokenClassification": ("SmolLM3Config", dict(DECODER, num_hidden_layers=4, no_rope_layer_interval=2), ("self_attn", "mlp")),
    "GlmForTokenClassification": ("GlmConfig", dict(DECODER, num_hidden_layers=4, head_dim=8), ("self_attn", "mlp")),
    "GPTNeoForTokenClassification": ("GPTNeoConfig", dict(TEXT, num_layers=4, attention_types=[[["local", "global"], 2]], window_size=3, pad_token_id=0), ("attn", "mlp")),
    "PhiForTokenClassification": ("PhiConfig", dict(DECODER, num_hidden_layers=4), ("self_attn", "mlp"), "sum"),
    "BloomForTokenClassification": ("BloomConfig", dict(TEXT, n_layer=4, pad_token_id=0), ("self_attention.dense", "mlp.dense_4h_to_h")),
    "FalconForTokenClassification": ("FalconConfig", dict(TEXT, num_hidden_layers=4, parallel_attn=False, bias=True, pad_token_id=0), ("self_attention", "mlp")),  # ALiBi (SDPA only): test_decoder_variants.py
    "MixtralForTokenClassification": ("MixtralConfig", MIXTRAL, ("self_attn", "mlp")),
    "Qwen2MoeForTokenClassification": ("Qwen2MoeConfig", QWEN2_MOE, ("self_attn", "mlp")),
}  # fmt: skip
