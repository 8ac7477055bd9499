"""Multilap with `trgl_lap_optimizer="persist"`: each module keeps one optimizer and one schedule over all its laps,
stored between them (in memory, or mapped from the run's progress files when offloading)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .offload import ModuleOffload
from .phases import Phase

STATE_NAMES = ("optimizer", "scheduler")


class LapOptimizerStore:
    """Module index -> `{"optimizer": state_dict, "scheduler": state_dict}` left by the module's previous lap.

    Args:
        persist (`bool`): `trgl_lap_optimizer == "persist"`; otherwise nothing is kept and every lap starts fresh.
    """

    def __init__(self, persist: bool):
        self.persist = persist
        self.states: dict[int, dict[str, Any]] = {}

    def applies(self, phase: Phase | None) -> bool:
        """Whether `phase` continues (or leaves) a module's optimizer across laps."""
        return phase is not None and phase.laps > 1 and self.persist

    def saved(self, phase: Phase | None) -> dict[str, Any] | None:
        """The state `phase`'s module left at its previous lap, if any."""
        return self.states.get(phase.modules[0]) if self.applies(phase) else None

    def keep(self, phase: Phase, optimizer: Any, scheduler: Any) -> None:
        """After a module's non-final lap: keep its optimizer and schedule for its next lap."""
        if self.applies(phase) and phase.lap < phase.laps and optimizer is not None:
            self.states[phase.modules[0]] = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}

    def keep_from_checkpoint(self, phase: Phase, checkpoint: Path) -> None:
        """After a module's non-final lap finished in a Trainer checkpoint: its saved optimizer and schedule."""
        if self.applies(phase) and phase.lap < phase.laps:
            self.states[phase.modules[0]] = {
                name: torch.load(checkpoint / f"{name}.pt", weights_only=True) for name in STATE_NAMES
            }

    def map_from(self, progress: Path) -> None:
        """Offload: read the states back mapped from the progress folder that now holds them."""
        self.states = ModuleOffload.map_lap_states(progress, self.states)
