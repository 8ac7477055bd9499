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
)  # fmt: skip
