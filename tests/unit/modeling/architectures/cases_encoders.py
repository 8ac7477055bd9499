"""Text encoders of the registry's conformance tests (`test_registry.py`), one row per task class:
class name -> (config class, config kwargs, ground-truth branch modules per block[, how branches combine]).

Ground truth: the output of each named submodule (first element of a tuple) is exactly the tensor its branch adds
to the residual stream; "sum" adds them into one stream update (parallel attention + MLP).
"""

from .cases_common import TEXT

ENCODERS_CASES = {
    "BertForSequenceClassification": ("BertConfig", dict(TEXT, num_hidden_layers=4), ("attention.output.dropout", "output.dropout")),
    "RobertaForSequenceClassification": ("RobertaConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "XLMRobertaForSequenceClassification": ("XLMRobertaConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "ElectraForSequenceClassification": ("ElectraConfig", dict(TEXT, num_hidden_layers=4, embedding_size=8), ("attention.output.dropout", "output.dropout")),
    "DistilBertForSequenceClassification": ("DistilBertConfig", dict(vocab_size=40, dim=16, n_layers=4, n_heads=2, hidden_dim=32, max_position_embeddings=64), ("attention", "ffn")),
    "DebertaV2ForSequenceClassification": ("DebertaV2Config", dict(TEXT, num_hidden_layers=4, relative_attention=True, position_buckets=8, max_relative_positions=16, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False), ("attention.output.dropout", "output.dropout")),
    "ModernBertForSequenceClassification": ("ModernBertConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, local_attention=4, classifier_pooling="mean"), ("attn", "mlp")),
    "CamembertForSequenceClassification": ("CamembertConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "Data2VecTextForSequenceClassification": ("Data2VecTextConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "ErnieForSequenceClassification": ("ErnieConfig", dict(TEXT, num_hidden_layers=4, use_task_id=True, task_type_vocab_size=3), ("attention.output.dropout", "output.dropout")),
    "RobertaPreLayerNormForSequenceClassification": ("RobertaPreLayerNormConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dropout")),
    "XLMRobertaXLForSequenceClassification": ("XLMRobertaXLConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.output.dropout", "output.dense")),
    "MegatronBertForSequenceClassification": ("MegatronBertConfig", dict(TEXT, num_hidden_layers=4), ("attention.output.dropout", "output.dropout")),
    "MPNetForSequenceClassification": ("MPNetConfig", dict(TEXT, num_hidden_layers=4, pad_token_id=1), ("attention.dropout", "output.dropout")),
}  # fmt: skip
