"""What every family file of the registry shares: the task names of `ArchitectureSpec.classes`, the usual class
pairs, and the configuration checks several families need."""

from __future__ import annotations

from typing import Any

CLASSIFICATION, CAUSAL_LM = "classification", "causal_lm"
TOKEN_CLASSIFICATION, MASKED_LM = "token_classification", "masked_lm"
"""Per-token heads: `*ForTokenClassification` (a label per token) and `*ForMaskedLM` (the masked tokens)."""


def lm_and_classifier(prefix: str, lm_name: str | None = None) -> dict[str, str]:
    """`{prefix}ForCausalLM` (or `lm_name`) and `{prefix}ForSequenceClassification`."""
    return {lm_name or f"{prefix}ForCausalLM": CAUSAL_LM, f"{prefix}ForSequenceClassification": CLASSIFICATION}


def refuse_cross_attention(config: Any) -> str | None:
    """Refuse an encoder configured as a decoder with cross-attention, or with a chunked feed-forward."""
    if getattr(config, "add_cross_attention", False) or getattr(config, "is_decoder", False):
        return "it is configured as a decoder with cross-attention (`add_cross_attention` / `is_decoder`)"
    if getattr(config, "chunk_size_feed_forward", 0):
        return "`chunk_size_feed_forward > 0` runs the feed-forward branch in chunks; set it to 0"
    return None
