"""The auxiliary heads' own schedule (`trgl_head_lr_multiplier`, `trgl_head_warmup_steps`; defaults in
`trgl_hf.modeling.pretrained_defaults`): a scaled learning rate, and head-only steps at the start of each phase."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

logger = logging.getLogger(__name__)


def scale_head_learning_rate(optimizer: torch.optim.Optimizer, heads: Iterable[torch.Tensor], multiplier: float):
    """Split every parameter group into its block and head parameters; the heads' group gets `lr x multiplier`."""
    head_ids = {id(p) for p in heads}
    groups = []
    for group in optimizer.param_groups:
        settings = {key: value for key, value in group.items() if key != "params"}
        blocks = [p for p in group["params"] if id(p) not in head_ids]
        head_params = [p for p in group["params"] if id(p) in head_ids]
        if blocks:
            groups.append({**settings, "params": blocks})
        if head_params:
            groups.append({**settings, "params": head_params, "lr": group["lr"] * multiplier})
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.add_param_group(group)


def hold_blocks_during_warmup(net: Any, step: int, max_steps: int, warmup: int, phase: Any = None) -> None:
    """During the first `warmup` steps of a phase only the heads train: the blocks' gradients are dropped (`step` is
    the phase's optimizer steps done, before this one; `phase` names it in a warning)."""
    if step == 0 and warmup >= max_steps > 0:
        logger.warning("trgl_head_warmup_steps=%d covers all %d steps of %s: its blocks do not train; lower it.",
                       warmup, max_steps, getattr(phase, "name", "the phase"))  # fmt: skip
    if step >= warmup:
        return
    heads = {id(p) for p in net.heads.parameters()}
    for index in net.trainable_modules:
        for param in net.module_parameters(index):
            if id(param) not in heads:
                param.grad = None
