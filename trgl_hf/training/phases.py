"""Phases: the calls of the underlying training loop that one TRGL run is made of, planned once, as values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

PHASES_DIR = "phases"


@dataclass(frozen=True)
class Phase:
    """Everything one phase changes: which modules train, for how long, what they read, what becomes final.

    Args:
        name (`str`): e.g. `"parallel"`, `"module-02"`, `"lap-2-module-01"`; names the phase's checkpoint folder.
        modules (`tuple[int, ...]`): 0-based modules that train.
        num_train_epochs (`float`): the phase's epochs.
        max_steps (`int`): the phase's step budget (-1: use `num_train_epochs`).
        final_modules (`tuple[int, ...]`): modules whose training ends with this phase (their stages are written).
        evaluated_modules (`int`): how many leading modules are trained once this phase runs (what `evaluate` scores).
        cached_from (`int`, *optional*): the first trained module reads cached outputs of the frozen prefix.
        lap (`int`): 1-based lap of a multilap phase (1 otherwise).
        laps (`int`): number of laps of the run (1 outside multilap mode).
    """

    name: str
    modules: tuple[int, ...]
    num_train_epochs: float
    max_steps: int
    final_modules: tuple[int, ...]
    evaluated_modules: int
    cached_from: int | None = None
    lap: int = 1
    laps: int = 1

    def output_dir(self, root: str | Path) -> Path:
        """Where the underlying Trainer writes this phase's `checkpoint-*` folders."""
        return Path(root) / PHASES_DIR / self.name

    def describe(self, phases: list[Phase], num_modules: int) -> str:
        """A short label for progress bars, e.g. `module 2/4 (phase 2/4)`."""
        position = [p.name for p in phases].index(self.name) + 1
        label = "modules" if len(self.modules) > 1 else "module"
        modules = ",".join(str(index + 1) for index in self.modules)
        return f"{label} {modules}/{num_modules} (phase {position}/{len(phases)})"


def plan_phases(
    num_modules: int, mode: str, laps: int, num_train_epochs: float, max_steps: int, use_cache: bool
) -> list[Phase]:
    """The phases of a run, in order.

    Args:
        num_modules (`int`): K.
        mode (`str`): `"parallel"`, `"sequential"` or `"multilap"`.
        laps (`int`): laps of the multilap mode.
        num_train_epochs (`float`) / max_steps (`int`): the budget per module (the whole run in parallel mode).
        use_cache (`bool`): sequential phases after the first train on cached prefix outputs.

    Returns:
        `list[Phase]`
    """
    if mode == "parallel":
        modules = tuple(range(num_modules))
        return [Phase("parallel", modules, num_train_epochs, max_steps, modules, num_modules)]
    laps = laps if mode == "multilap" else 1
    phases, trained = [], 0
    for lap in range(1, laps + 1):
        for index in range(num_modules):
            trained = max(trained, index + 1)
            phases.append(
                Phase(
                    name=f"module-{index + 1:02d}" if laps == 1 else f"lap-{lap}-module-{index + 1:02d}",
                    modules=(index,),
                    num_train_epochs=num_train_epochs / laps,
                    max_steps=max(1, max_steps // laps) if max_steps > 0 else -1,
                    final_modules=(index,) if lap == laps else (),
                    evaluated_modules=trained,
                    cached_from=index if use_cache and index > 0 else None,
                    lap=lap,
                    laps=laps,
                )
            )
    return phases


def lap_order(size: int, seed: int, start: int, length: int) -> list[int]:
    """Positions `start .. start + length` of one uninterrupted sequence of epochs over `size` examples (each epoch a
    new seeded permutation): the examples of one multilap lap, so that lap 2 continues where lap 1 stopped.

    Args:
        size (`int`): examples in the dataset.
        seed (`int`): the data seed.
        start (`int`): examples the module's earlier laps took.
        length (`int`): examples this lap takes.
    """
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < start + length:
        order += torch.randperm(size, generator=generator).tolist()
    return order[start : start + length]


__all__ = ["PHASES_DIR", "Phase", "lap_order", "plan_phases"]
