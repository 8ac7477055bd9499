"""Mixture-of-experts decoders of the registry's conformance tests (`test_registry.py`), one row per task class:
class name -> (config class, config kwargs, ground-truth branch modules per block[, how branches combine]).

Ground truth: the output of each named submodule (first element of a tuple) is exactly the tensor its branch adds
to the residual stream; "sum" adds them into one stream update (parallel attention + MLP).
"""

from .cases_common import DECODER

MIXTRAL = dict(DECODER, num_hidden_layers=4, num_local_experts=4, num_experts_per_tok=2, sliding_window=4)
QWEN2_MOE = dict(
    DECODER,
    num_hidden_layers=4,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=16,
    shared_expert_intermediate_size=16,
    mlp_only_layers=[1],
)  # one dense layer among the sparse ones
OLMOE = dict(DECODER, num_hidden_layers=4, num_experts=4, num_experts_per_tok=2)

MIXTURES_CASES = {
    "MixtralForCausalLM": ("MixtralConfig", MIXTRAL, ("self_attn", "mlp")),
    "MixtralForSequenceClassification": ("MixtralConfig", MIXTRAL, ("self_attn", "mlp")),
    "Qwen2MoeForCausalLM": ("Qwen2MoeConfig", QWEN2_MOE, ("self_attn", "mlp")),
    "Qwen2MoeForSequenceClassification": ("Qwen2MoeConfig", QWEN2_MOE, ("self_attn", "mlp")),
    "OlmoeForCausalLM": ("OlmoeConfig", OLMOE, ("self_attn", "mlp")),
}  # fmt: skip
