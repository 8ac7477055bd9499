"""Phases: the calls of the underlying training loop that one TRGL run is made of, planned once, as values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    """

    name: str
    modules: tuple[int, ...]
    num_train_epochs: float
    max_steps: int
    final_modules: tuple[int, ...]
    evaluated_modules: int
    cached_from: int | None = None

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
                )
            )
    return phases


__all__ = ["PHASES_DIR", "Phase", "plan_phases"]
