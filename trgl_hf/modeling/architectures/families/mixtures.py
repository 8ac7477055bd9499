"""Mixture-of-experts decoders of the registry: one `ArchitectureSpec` per family. A block's feed-forward branch is its
sparse MoE block's output (routed experts, plus Qwen2-MoE's gated shared expert: what is added to the stream); a
router's load-balancing loss would belong to the module that owns the router, which trgl_hf does not compute yet, so
`output_router_logits=True` is refused (the default, False, trains exactly: the task model adds no auxiliary loss)."""

from __future__ import annotations

from typing import Any

from ..spec import ArchitectureSpec
from .common import CAUSAL_LM, lm_and_classifier
from .decoders import DECODER


def refuse_router_aux_loss(config: Any) -> str | None:
    """Refuse `output_router_logits=True`: the task model then adds `router_aux_loss_coef` x the routers'
    load-balancing loss to its loss, which TRGL's module losses do not include."""
    if getattr(config, "output_router_logits", False):
        return (
            "`output_router_logits=True` adds the routers' load-balancing loss (x `router_aux_loss_coef`) to the "
            "task loss, and trgl_hf's module losses do not include it yet; set `output_router_logits=False` (the "
            "default) to train without it"
        )
    return None


MOE_DECODER = dict(
    DECODER,
    check=refuse_router_aux_loss,
    penalised="attention and sparse-MoE branches (the stream's change across each sub-layer; the MoE branch is the "
    "weighted sum of the routed experts' outputs, plus the gated shared expert where there is one)",
)
"""Llama's block structure with a sparse MoE block as the MLP (`mlp`), `output_router_logits=True` refused."""

MIXTURES = (
    ArchitectureSpec("Mixtral", ("mixtral",), classes=lm_and_classifier("Mixtral"), **MOE_DECODER),
    ArchitectureSpec("Qwen2-MoE", ("qwen2_moe",), classes=lm_and_classifier("Qwen2Moe"), **MOE_DECODER),
    ArchitectureSpec("OLMoE", ("olmoe",), classes={"OlmoeForCausalLM": CAUSAL_LM}, **MOE_DECODER),
)
