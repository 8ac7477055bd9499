"""The transport schedule: the one place that decides how much each module's transport cost weighs.

    loss_k = task loss_k + weight(k) * transport_k

- `use_transport=False` (VanGL): weight 0, and the transport cost is not part of any graph;
- a list `tau`: weight 1 / (2 tau_k) with the given tau_k;
- `tau_schedule="halves"` (the paper's rule): tau / 2 for the first floor(K / 2) modules, tau for the others;
- `tau_schedule="constant"`: tau for every module;
- `tau_schedule="multipliers"` (the paper's appendix D): weight 1 / lambda_k, with lambda_k += h * task loss_k every
  `multiplier_period` optimizer steps; lambda lives in the model's `multipliers` buffer (saved with it).
- `tau_scale="relative"` (this library's extension, not in the paper): tau_k is multiplied by E_k, module k's branch
  energy on its first training batch (the model's `energy_scale` buffer), so weight 1 / (2 tau_k E_k).
"""

from __future__ import annotations

import math
from typing import Any

import torch

DEFAULT_TAU = 10.0
"""tau when none is given (see `TRGLConfig.tau`)."""


class TransportSchedule:
    """Weights of the transport term of every module, from a [`TRGLConfig`] and the multiplier state.

    Args:
        config (`TRGLConfig`): `use_transport`, `tau`, `tau_schedule`, `multiplier_*` and `num_modules` are read.
        multipliers (`torch.Tensor`, *optional*): the lambda_k of the `"multipliers"` schedule (updated in place).

    Example:
    ```python
    >>> from trgl_hf import TRGLConfig
    >>> TransportSchedule(TRGLConfig(num_modules=4, tau=2.0)).weight(0)
    0.5
    ```
    """

    def __init__(self, config: Any, multipliers: torch.Tensor | None = None, energy_scale: torch.Tensor | None = None):
        self.config = config
        self.multipliers = multipliers
        self.energy_scale = energy_scale

    @property
    def is_relative(self) -> bool:
        """Whether tau is relative to each module's initial branch energy (this library's extension)."""
        return bool(self.config.use_transport) and getattr(self.config, "tau_scale", "absolute") == "relative"

    def is_active(self, index: int) -> bool:
        """Whether module `index` has a transport term at all (decided by the configuration: no device value read)."""
        if not self.config.use_transport:
            return False
        return self.uses_multipliers or not math.isinf(self.taus()[index])

    @property
    def uses_multipliers(self) -> bool:
        """Whether weights come from the method of multipliers (and change during training)."""
        return bool(self.config.use_transport) and self.config.tau_schedule == "multipliers"

    def taus(self) -> list[float]:
        """tau_k of every module (`inf` when the transport term is off); meaningless under multipliers."""
        num_modules = int(self.config.num_modules)
        tau = DEFAULT_TAU if self.config.tau is None else self.config.tau
        if not self.config.use_transport:
            return [math.inf] * num_modules
        if isinstance(tau, (list, tuple)):
            return [float(t) for t in tau]
        if self.config.tau_schedule == "halves":
            first_half = num_modules // 2
            return [tau / 2] * first_half + [float(tau)] * (num_modules - first_half)
        return [float(tau)] * num_modules

    def weight(self, index: int) -> float | torch.Tensor:
        """Weight of module `index`'s transport cost: 0 (off), 1 / lambda_k (multipliers), 1 / (2 tau_k E_k)
        (relative) or 1 / (2 tau_k). The first two are 0-d tensors on the buffers' device: reading them on the host
        in every step would stall an accelerator."""
        if not self.is_active(index):
            return 0.0
        if self.uses_multipliers:
            if self.multipliers is None:
                raise ValueError("The multipliers schedule needs the model's `multipliers` buffer.")
            return 1.0 / self.multipliers[index]
        tau = self.taus()[index]
        if self.is_relative and self.energy_scale is not None:  # until measured, the scale counts as 1
            scale = self.energy_scale[index]
            return 1.0 / (2.0 * tau * torch.where(scale > 0, scale, torch.ones_like(scale)))
        return 1.0 / (2.0 * tau)

    def updates_at(self, step: int) -> bool:
        """Whether the multipliers are updated after optimizer step `step` (1-based)."""
        return self.uses_multipliers and step % int(self.config.multiplier_period) == 0

    @torch.no_grad()
    def after_step(self, step: int, task_losses: dict[int, Any]) -> None:
        """Method-of-multipliers update after optimizer step `step` (1-based): lambda_k += h * task loss of module k
        (the losses already averaged over processes). Does nothing for the other schedules or between periods."""
        if not self.updates_at(step):
            return
        for index, value in task_losses.items():
            self.multipliers[index] += self.config.multiplier_step * value.to(self.multipliers)

    def describe(self) -> list[float | None] | str:
        """For model cards and run metadata: tau per module (None when off), or `"multipliers"`."""
        if self.uses_multipliers:
            return "multipliers"
        taus = [None if math.isinf(t) else t for t in self.taus()]
        if self.is_relative:
            return [f"{t} x initial branch energy" if t is not None else None for t in taus]
        return taus


__all__ = ["DEFAULT_TAU", "TransportSchedule"]
