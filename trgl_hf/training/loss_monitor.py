"""Each trained module's losses during a phase, kept on the device: what the training logs report per module, and the
first step a loss was NaN or infinite (read by the host only when logs are written, before a checkpoint and when a
phase ends: no host sync per step)."""

from __future__ import annotations

import torch


class NonFiniteLossError(ValueError):
    """A module's loss became NaN or infinite during training."""


class LossMonitor:
    """Sums of each trained module's task loss and transport cost since the last log, and the first non-finite loss."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new phase)."""
        self.sums: dict[int, list] = {}  # module -> [task loss sum, transport sum, count]
        self.first_nonfinite: dict[int, torch.Tensor] = {}  # module -> first step with a NaN / inf loss (-1: none)
        self.nonfinite_values: dict[int, torch.Tensor] = {}

    def record(self, index: int, step: int, loss: torch.Tensor, task_loss: torch.Tensor, transport: torch.Tensor):
        """Add module `index`'s losses of optimizer step `step` (1-based), all detached."""
        sums = self.sums.setdefault(index, [0.0, 0.0, 0])
        sums[0], sums[1], sums[2] = sums[0] + task_loss, sums[1] + transport, sums[2] + 1
        first = self.first_nonfinite.get(index)
        if first is None:
            first = self.first_nonfinite[index] = torch.full((), -1, dtype=torch.long, device=loss.device)
        new = ~torch.isfinite(loss) & (first < 0)
        self.first_nonfinite[index] = torch.where(new, torch.full_like(first, step), first)
        self.nonfinite_values[index] = torch.where(new, loss.float(), self.nonfinite_values.get(index, loss.float()))

    def log_fields(self) -> dict[str, float]:
        """`module_{k}_task_loss` and `module_{k}_transport`, averaged since the last call."""
        fields = {}
        for index, (task, transport, count) in sorted(self.sums.items()):
            fields[f"module_{index + 1}_task_loss"] = round(float(task) / count, 4)
            fields[f"module_{index + 1}_transport"] = round(float(transport) / count, 6)
        self.sums = {}
        return fields

    def check(self, phase_name: str) -> None:
        """Raise a [`NonFiniteLossError`] naming the module and the step if a loss was NaN or infinite."""
        if not self.first_nonfinite:
            return
        indices = sorted(self.first_nonfinite)
        firsts = torch.stack([self.first_nonfinite[i] for i in indices]).tolist()
        for index, first in zip(indices, firsts):
            if first >= 0:
                raise NonFiniteLossError(
                    f"The loss of module {index + 1} became {float(self.nonfinite_values[index])} at step {first} of "
                    f"phase {phase_name}; the stages written so far are kept. Lower the learning rate, raise tau, or "
                    "check the inputs."
                )
