"""Settings for pretrained bases: this library's extension, not part of the paper.

A base loaded with `from_pretrained` (its config names where it came from) gets, unless the user sets them:

- heads at a learning rate of at least `PRETRAINED_HEAD_LEARNING_RATE` (1e-3: x20 at the usual fine-tuning rate
  5e-5; never below `learning_rate`): the auxiliary heads start from scratch (or from a copy of a head trained for
  another depth) while the blocks only need a fine-tuning step;
- no head-only warm-up (`PRETRAINED_HEAD_WARMUP_STEPS = 0`: 50 warm-up steps were tried and did not help on
  validation; `trgl_head_warmup_steps` stays available);
- `tau_scale="relative"` with `tau = PRETRAINED_TAU = 1000`: tau relative to each module's branch energy on its
  first batch, because the residual branches of a pretrained transformer are large and an absolute tau then mostly
  shrinks them; and a weak penalty (it starts at 1 / (2 tau) = 0.0005 of the energy), because a module whose head
  cannot read the task yet (MiniLM's [CLS] state carries almost no sentence information at depth 2) otherwise only
  learns to shrink its pretrained branches.
- for a text sequence classifier whose stages can export it exactly (no final norm after the last block: BERT,
  RoBERTa, MiniLM, ...), mean-pooling heads (`aux_head="mean"`, `PRETRAINED_TEXT_CLASSIFIER_HEAD`): the mean of the
  token states over the attention mask, LayerNorm, linear. The native head reads the [CLS] state through the
  pretrained pooler, and in the first layers of a pretrained encoder that state barely varies between sentences
  (MiniLM: std 0.001 at depth 2), so early heads stayed at chance and their modules learned nothing useful. Chosen on
  validation (SST-2, MiniLM, seed 0, with the settings below): last-module validation accuracy 82.9% with mean heads
  vs 79.0% native at K = 3, 81.1% vs 74.5% at K = 6. Stages then load with `trust_remote_code=True`
  (`TRGLStageForSequenceClassification`); pass `aux_head="native"` for stages that are plain transformers models.

The values were chosen on SST-2's validation split with the pretrained MiniLM-L6 (`benchmarks/text_sst2_minilm.py`,
results in `benchmarks/results/sst2_minilm.md`): among heads at x20 with or without 50 warm-up steps, with relative
or absolute tau = 10, heads at x100, and relative tau = 100 and 1000, the highest last-module validation accuracy
(K = 3, seed 0, one epoch per module of 8,000 sentences) was heads at x20, no warm-up, relative tau = 1000 (79.0%;
relative tau = 10: 74.1%, 100: 76.4%; the others 72.2-73.7%; VanGL with heads at the blocks' rate: 75.0%).
A base built from a config (random weights) keeps the paper's settings: heads at the modules' learning rate, no
warm-up, absolute tau.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .transport import DEFAULT_TAU

PRETRAINED_HEAD_LEARNING_RATE = 1e-3
PRETRAINED_HEAD_WARMUP_STEPS = 0
PRETRAINED_TAU_SCALE = "relative"
PRETRAINED_TAU = 1000.0
PRETRAINED_TEXT_CLASSIFIER_HEAD = "mean"


def is_pretrained_base(config: Any) -> bool:
    """Whether the TRGL config's base was loaded from pretrained weights (`from_pretrained` records its source)."""
    return bool(getattr(config, "base_model_name_or_path", None))


def resolve_aux_head(config: Any, adapter: Any) -> str:
    """`aux_head` when left unset: `PRETRAINED_TEXT_CLASSIFIER_HEAD` ("mean") for a pretrained text sequence
    classifier whose stages can export it exactly (see `TransformerCutter.mean_head_problem`), else the family's
    default head."""
    if config.aux_head is not None:
        return config.aux_head
    mean_head_problem = getattr(adapter, "mean_head_problem", None)
    if is_pretrained_base(config) and mean_head_problem is not None and mean_head_problem() is None:
        return PRETRAINED_TEXT_CLASSIFIER_HEAD
    return adapter.default_head


def resolve_tau_scale(config: Any) -> str:
    """`tau_scale` when left unset: relative for a pretrained base trained with the transport term whose `tau` is
    unset too, else absolute."""
    if config.tau_scale is not None:
        return config.tau_scale
    transport = config.use_transport and config.tau_schedule != "multipliers"
    if config.tau is None and is_pretrained_base(config) and transport:
        return PRETRAINED_TAU_SCALE
    return "absolute"  # an explicit tau keeps the paper's (absolute) meaning


def resolve_tau(config: Any) -> float | list[float]:
    """`tau` when left unset: `PRETRAINED_TAU` for a pretrained base with a relative tau, else `DEFAULT_TAU`
    (call after `tau_scale` is resolved)."""
    if config.tau is not None:
        return config.tau
    return PRETRAINED_TAU if is_pretrained_base(config) and config.tau_scale == "relative" else DEFAULT_TAU


@dataclass(frozen=True)
class HeadSettings:
    """The auxiliary heads' learning-rate multiplier and warm-up steps in effect, and where they come from."""

    lr_multiplier: float
    warmup_steps: int
    source: str


def head_settings(args: Any, config: Any) -> HeadSettings:
    """`trgl_head_lr_multiplier` / `trgl_head_warmup_steps` as given, or the defaults for the model's base."""
    pretrained = is_pretrained_base(config)
    multiplier = args.trgl_head_lr_multiplier
    warmup = args.trgl_head_warmup_steps
    unset = [name for name, value in (("trgl_head_lr_multiplier", multiplier),
                                      ("trgl_head_warmup_steps", warmup)) if value is None]  # fmt: skip
    if multiplier is None:
        multiplier = max(1.0, PRETRAINED_HEAD_LEARNING_RATE / args.learning_rate) if pretrained else 1.0
    if warmup is None:
        warmup = PRETRAINED_HEAD_WARMUP_STEPS if pretrained else 0
    if not unset:
        source = "as given"
    elif pretrained:
        source = f"defaults for a pretrained base ({', '.join(unset)} unset)"
    else:
        source = f"defaults for a base with random weights ({', '.join(unset)} unset)"
    return HeadSettings(float(multiplier), int(warmup), source)


__all__ = [
    "HeadSettings",
    "PRETRAINED_HEAD_LEARNING_RATE",
    "PRETRAINED_HEAD_WARMUP_STEPS",
    "PRETRAINED_TAU",
    "PRETRAINED_TAU_SCALE",
    "head_settings",
    "is_pretrained_base",
    "resolve_tau",
    "resolve_tau_scale",
]
