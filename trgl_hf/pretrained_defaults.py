"""Settings for pretrained bases: this library's extension, not part of the paper.

A base loaded with `from_pretrained` (its config names where it came from) gets, unless the user sets them:

- heads at `learning_rate x PRETRAINED_HEAD_LR_MULTIPLIER`: the auxiliary heads start from scratch (or from a copy
  of a head trained for another depth) while the blocks only need a fine-tuning step;
- `PRETRAINED_HEAD_WARMUP_STEPS` optimizer steps (at most a quarter of the phase's steps) at the start of each
  phase in which only the heads train (linear probe, then fine-tune), so a module is not pushed around by a head that
  still outputs noise;
- `tau_scale="relative"`: tau relative to each module's branch energy on its first batch, because the residual
  branches of a pretrained transformer are large and an absolute tau then mostly shrinks them.

The values were chosen on SST-2's validation split with the pretrained MiniLM-L6 (`benchmarks/text_sst2_minilm.py`,
results in `benchmarks/results/sst2_minilm.md`). A base built from a config (random weights) keeps the paper's
settings: heads at the modules' learning rate, no warm-up, absolute tau.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PRETRAINED_HEAD_LR_MULTIPLIER = 20.0
PRETRAINED_HEAD_WARMUP_STEPS = 50
PRETRAINED_TAU_SCALE = "relative"
DEFAULT_WARMUP_SHARE = 0.25
"""The default warm-up takes at most this share of a phase's optimizer steps (a short run still trains its blocks)."""


def is_pretrained_base(config: Any) -> bool:
    """Whether the TRGL config's base was loaded from pretrained weights (`from_pretrained` records its source)."""
    return bool(getattr(config, "base_model_name_or_path", None))


def resolve_tau_scale(config: Any) -> str:
    """`tau_scale` when left unset: relative for a pretrained base trained with the transport term, else absolute."""
    if config.tau_scale is not None:
        return config.tau_scale
    if is_pretrained_base(config) and config.use_transport and config.tau_schedule != "multipliers":
        return PRETRAINED_TAU_SCALE
    return "absolute"


@dataclass(frozen=True)
class HeadSettings:
    """The auxiliary heads' learning-rate multiplier and warm-up steps in effect, and where they come from."""

    lr_multiplier: float
    warmup_steps: int
    source: str
    warmup_share: float = 1.0

    def warmup_limit(self, phase_steps: int) -> int:
        """Head-only steps at the start of a phase of `phase_steps` optimizer steps."""
        return min(self.warmup_steps, int(self.warmup_share * phase_steps))


def head_settings(args: Any, config: Any) -> HeadSettings:
    """`trgl_head_lr_multiplier` / `trgl_head_warmup_steps` as given, or the defaults for the model's base."""
    pretrained = is_pretrained_base(config)
    multiplier = args.trgl_head_lr_multiplier
    warmup = args.trgl_head_warmup_steps
    unset = [name for name, value in (("trgl_head_lr_multiplier", multiplier),
                                      ("trgl_head_warmup_steps", warmup)) if value is None]  # fmt: skip
    if multiplier is None:
        multiplier = PRETRAINED_HEAD_LR_MULTIPLIER if pretrained else 1.0
    share = 1.0
    if warmup is None:
        warmup, share = (PRETRAINED_HEAD_WARMUP_STEPS, DEFAULT_WARMUP_SHARE) if pretrained else (0, 1.0)
    if not unset:
        source = "as given"
    elif pretrained:
        source = f"defaults for a pretrained base ({', '.join(unset)} unset)"
    else:
        source = f"defaults for a base with random weights ({', '.join(unset)} unset)"
    return HeadSettings(float(multiplier), int(warmup), source, share)


__all__ = [
    "DEFAULT_WARMUP_SHARE",
    "HeadSettings",
    "PRETRAINED_HEAD_LR_MULTIPLIER",
    "PRETRAINED_HEAD_WARMUP_STEPS",
    "PRETRAINED_TAU_SCALE",
    "head_settings",
    "is_pretrained_base",
    "resolve_tau_scale",
]
