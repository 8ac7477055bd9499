"""Task classes added to families registered elsewhere, by task: `{model_type: {class name: task}}` per table, merged
into the family's `ArchitectureSpec.classes` by `families/__init__.py`.

Token classification (`*ForTokenClassification`: a dropout and a linear layer on every token's hidden state) and
masked-LM heads (`*ForMaskedLM`: a transform and a vocabulary projection on every token) read the last hidden state
position by position, so each module's copy of the head (run by the task model's own `forward`) and the stage built
from modules 1..k and head k give the same logits exactly. A masked-LM head's projection is tied to the input
embedding in the base; every module's head holds its own untied copy and the stages are saved untied
(`tie_word_embeddings=False`), so stage k reproduces head k after training.
"""

from __future__ import annotations

from .common import MASKED_LM, TOKEN_CLASSIFICATION


def _token(prefix: str) -> dict[str, str]:
    return {f"{prefix}ForTokenClassification": TOKEN_CLASSIFICATION}


def _token_and_mlm(prefix: str) -> dict[str, str]:
    return {f"{prefix}ForTokenClassification": TOKEN_CLASSIFICATION, f"{prefix}ForMaskedLM": MASKED_LM}


TASK_CLASSES: dict[str, dict[str, str]] = {
    "bert": _token_and_mlm("Bert"),
    "roberta": _token_and_mlm("Roberta"),
    "xlm-roberta": _token_and_mlm("XLMRoberta"),
    "electra": _token_and_mlm("Electra"),
    "distilbert": _token_and_mlm("DistilBert"),
    "deberta-v2": _token_and_mlm("DebertaV2"),
    "modernbert": _token_and_mlm("ModernBert"),
    "llama": _token("Llama"),
    "gpt2": _token("GPT2"),
    "qwen2": _token("Qwen2"),
    "mistral": _token("Mistral"),
    "camembert": _token_and_mlm("Camembert"),
    "data2vec-text": _token_and_mlm("Data2VecText"),
    "ernie": _token_and_mlm("Ernie"),
    "roberta-prelayernorm": _token_and_mlm("RobertaPreLayerNorm"),
    "xlm-roberta-xl": _token_and_mlm("XLMRobertaXL"),
    "megatron-bert": _token_and_mlm("MegatronBert"),
    "mpnet": _token_and_mlm("MPNet"),
    "gpt_neox": _token("GPTNeoX"),
    "qwen3": _token("Qwen3"),
    "gemma": _token("Gemma"),
    "gemma2": _token("Gemma2"),
    "phi3": _token("Phi3"),
    "stablelm": _token("StableLm"),
    "starcoder2": _token("Starcoder2"),
    "smollm3": _token("SmolLM3"),
    "glm": _token("Glm"),
    "gpt_neo": _token("GPTNeo"),
    "phi": _token("Phi"),
    "bloom": _token("Bloom"),
    "falcon": _token("Falcon"),
    "mixtral": _token("Mixtral"),
    "qwen2_moe": _token("Qwen2Moe"),
}
"""`model_type` -> the extra task classes of that family (e.g. its `*ForTokenClassification`)."""
