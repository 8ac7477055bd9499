"""Text encoders of the registry (BERT and its relatives): one `ArchitectureSpec` per family."""

from __future__ import annotations

from typing import Any

from ..spec import ArchitectureSpec, PostNorm, StreamPoints, norm_then_pooler
from ..transformer import TransformerCutter
from .common import CLASSIFICATION, refuse_cross_attention


def _refuse_deberta(config: Any) -> str | None:
    if getattr(config, "conv_kernel_size", 0):
        return "its convolution after the first layer (`conv_kernel_size > 0`) runs between blocks"
    return refuse_cross_attention(config)


BERT_LIKE = dict(
    adapter=TransformerCutter,
    blocks="encoder.layer",
    layout=PostNorm(("attention.output.LayerNorm", "output.LayerNorm")),
    tail_names=("pooler",),
    check=refuse_cross_attention,
    penalised="attention and feed-forward branches before their post-LayerNorm",
)
"""BERT's block structure: post-LayerNorm attention and feed-forward, `encoder.layer`, a pooler."""

PRE_LN_BERT = dict(
    BERT_LIKE,
    penalised="attention and feed-forward branches (pre-LayerNorm: the stream's change across each sub-layer)",
)
"""BERT's layout made pre-LayerNorm (RoBERTa-PreLayerNorm, XLM-RoBERTa-XL, MegatronBERT): each row names the module
that reads the stream between the two branches and the final LayerNorm that runs before the pooler."""

ENCODERS = (
    ArchitectureSpec("BERT", ("bert",), classes={"BertForSequenceClassification": CLASSIFICATION}, **BERT_LIKE),
    ArchitectureSpec("RoBERTa", ("roberta",), classes={"RobertaForSequenceClassification": CLASSIFICATION},
                     **BERT_LIKE),
    ArchitectureSpec("XLM-RoBERTa", ("xlm-roberta",),
                     classes={"XLMRobertaForSequenceClassification": CLASSIFICATION}, **BERT_LIKE),
    ArchitectureSpec("ELECTRA", ("electra",), classes={"ElectraForSequenceClassification": CLASSIFICATION},
                     **BERT_LIKE),
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
    ArchitectureSpec("CamemBERT", ("camembert",), classes={"CamembertForSequenceClassification": CLASSIFICATION},
                     **BERT_LIKE),
    ArchitectureSpec("Data2VecText", ("data2vec-text",),
                     classes={"Data2VecTextForSequenceClassification": CLASSIFICATION}, **BERT_LIKE),
    ArchitectureSpec("ERNIE", ("ernie",), classes={"ErnieForSequenceClassification": CLASSIFICATION}, **BERT_LIKE),
    ArchitectureSpec(
        "RoBERTa-PreLayerNorm", ("roberta-prelayernorm",),
        classes={"RobertaPreLayerNormForSequenceClassification": CLASSIFICATION},
        **{**PRE_LN_BERT, "layout": StreamPoints(("intermediate",)), "tail_names": ("LayerNorm", "pooler"),
           "tail": norm_then_pooler("LayerNorm")},
    ),
    ArchitectureSpec(
        "XLM-RoBERTa-XL", ("xlm-roberta-xl",), classes={"XLMRobertaXLForSequenceClassification": CLASSIFICATION},
        **{**PRE_LN_BERT, "layout": StreamPoints(("LayerNorm",)), "tail_names": ("encoder.LayerNorm", "pooler"),
           "tail": norm_then_pooler("encoder.LayerNorm")},
    ),
    ArchitectureSpec(
        "MegatronBERT", ("megatron-bert",), classes={"MegatronBertForSequenceClassification": CLASSIFICATION},
        **{**PRE_LN_BERT, "layout": StreamPoints(("ln",)), "tail_names": ("encoder.ln", "pooler"),
           "tail": norm_then_pooler("encoder.ln")},
    ),
    ArchitectureSpec(
        "MPNet", ("mpnet",), classes={"MPNetForSequenceClassification": CLASSIFICATION},
        **{**BERT_LIKE, "layout": PostNorm(("attention.LayerNorm", "output.LayerNorm")),
           "penalised": "attention and feed-forward branches before their post-LayerNorm (the relative position "
           "bias `encoder.relative_attention_bias`, shared by every layer, is trained with module 1)"}),
)  # fmt: skip
