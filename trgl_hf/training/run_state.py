"""The state of a TRGL run in its `output_dir`: which phases are finished, the weights they left, their stages.

- `trgl_state.json`: the phases of the run, those completed, the stage metrics, the checksum of every written stage,
  the stages still to write, the progress folder and the run's fingerprint;
- `trgl-progress-NN/`: the whole TRGL model after the NN-th completed phase, one file per module
  (`trgl_hf.export.module_files`; the modules the phase did not train are hard links to the previous folder's files).
  The last one stays when the run ends: it loads with `TRGLModel.from_pretrained` and lets a damaged stage be exported
  again;
- `phases/<phase>/checkpoint-*`: the Trainer checkpoints of the phase in progress.

Completing a phase is one transition in which nothing a resume needs is removed before what replaces it is recorded:
(1) the new weights go to a new progress folder; (2) the state file is replaced (atomically), naming that folder and
the phase's stages as pending; (3) only then are the older progress folder and the phase's checkpoints removed;
(4) each pending stage is exported from those weights and its checksum recorded. A run killed anywhere resumes from
the last recorded state: pending stages are exported again (the same bytes), recorded stages are verified and never
rewritten unless corrupted, and nothing trains on missing predecessors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..export.atomic_files import atomic_directory, link_file, remove_tree, write_json
from ..export.module_files import (
    LAP_STATE_PATTERN,
    is_module_folder,
    lap_state_filename,
    read_module_folder,
    write_module_folder,
)
from ..export.stage_folders import stage_checksums, stage_folder, stage_intact
from ..modeling.weight_files import check_weight_folder
from .phases import PHASES_DIR, Phase

STATE_FILE = "trgl_state.json"
PROGRESS_PREFIX = "trgl-progress"
WEIGHTS_FILE = "model.safetensors"
LAP_STATES_FILE = "trgl_lap_optimizers.pt"


class RunState:
    """What a run in `root` has finished, read from and written to `trgl_state.json`.

    Args:
        root (`Path`): the run's `output_dir`.
        phases (`list[Phase]`): the run's plan.
        fingerprint (`str`): the run's fingerprint (model cut, objective, schedule, data).
        writer (`bool`): this process writes the folder (the main process); the others only follow in memory.
    """

    def __init__(
        self, root: Path, phases: list[Phase], fingerprint: str, identity: dict | None = None, writer: bool = True
    ):
        self.root, self.phases, self.fingerprint, self.writer = Path(root), phases, fingerprint, writer
        self.identity = identity or {}
        self.completed: list[str] = []
        self.stage_metrics: dict[int, dict[str, float]] = {}
        self.stages: dict[int, dict[str, str]] = {}
        self.pending: list[int] = []
        self.progress: str | None = None
        self.phase_steps: dict[str, int] = {}
        self.lap_states: dict[int, dict[str, Any]] = {}
        self.log_history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ reading

    @classmethod
    def load(
        cls, root: Path, phases: list[Phase], fingerprint: str, identity: dict | None = None, writer: bool = True
    ) -> RunState:
        """The recorded state of the run in `root` (an empty state when there is none); the caller has checked
        that it is this run's (`guards.check_output_dir`).

        Raises:
            `ValueError`: the state belongs to a run with other phases, or is corrupted.
        """
        state = cls(root, phases, fingerprint, identity, writer)
        path = state.root / STATE_FILE
        if not path.exists():
            return state
        try:
            recorded = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is corrupted ({error}): delete it or use a new `output_dir`.") from error
        expected = [p.name for p in phases]
        if recorded.get("phases") != expected:
            raise ValueError(
                f"{path} belongs to a run with phases {recorded.get('phases')}, not {expected}: resume with the "
                "same `trgl_mode`, `trgl_laps` and number of modules, or use a new `output_dir`."
            )
        state.completed = list(recorded.get("completed_phases", []))
        state.stage_metrics = {int(k): v for k, v in recorded.get("stage_metrics", {}).items()}
        state.stages = {int(k): v for k, v in recorded.get("stages", {}).items()}
        state.pending = [int(k) for k in recorded.get("pending_stages", [])]
        state.progress = recorded.get("progress")
        state.phase_steps = dict(recorded.get("phase_steps", {}))
        state.log_history = list(recorded.get("log_history", []))
        return state

    @property
    def finished(self) -> bool:
        """Every phase is completed and every stage written."""
        return len(self.completed) == len(self.phases) and not self.pending

    def restore(self, model: Any, mapped: bool = False) -> None:
        """Load the weights the last completed phase left into `model` (`mapped`: map its modules to the progress
        files instead of copying them, see `trgl_hf.export.module_files`).

        Raises:
            `ValueError`: phases are recorded as completed but their weights are missing or unreadable (resuming
                would train the next modules on untrained predecessors).
        """
        if not self.completed:
            return
        folder = self.root / (self.progress or "")
        if self.progress is None or not folder.is_dir():
            raise ValueError(
                f"{self.root / STATE_FILE} records {len(self.completed)} finished phase(s) but their weights "
                f"({folder}) are missing: the run cannot resume without training later modules on untrained "
                "predecessors. Start it again in a new `output_dir`."
            )
        check_weight_folder(folder)
        if is_module_folder(folder):
            read_module_folder(model, folder, mapped=None if mapped else set())
        else:  # a whole-model folder (written under FSDP)
            model.load_state_dict(type(model).from_pretrained(folder).state_dict())
        if (folder / LAP_STATES_FILE).exists():
            self.lap_states = torch.load(folder / LAP_STATES_FILE, weights_only=True)
        for path in sorted(folder.glob(LAP_STATE_PATTERN)):  # one file per module, mapped like the modules
            module = int(path.stem.rsplit("-", 1)[1]) - 1
            self.lap_states[module] = torch.load(path, weights_only=True, mmap=mapped)

    def damaged_stages(self) -> list[int]:
        """Recorded stages with a file missing or different from the checksum taken when it was written (see
        [`stage_checksums`]: remote-code `*.py` files included)."""
        return [stage for stage, sums in sorted(self.stages.items())
                if not stage_intact(stage_folder(self.root, stage), sums)]  # fmt: skip

    # ------------------------------------------------------------------ writing

    def save(self) -> None:
        """Replace the state file atomically."""
        if not self.writer:
            return
        write_json(self.root / STATE_FILE, {
            "phases": [p.name for p in self.phases],
            "completed_phases": self.completed,
            "stage_metrics": {str(k): v for k, v in self.stage_metrics.items()},
            "stages": {str(k): v for k, v in self.stages.items()},
            "pending_stages": self.pending,
            "progress": self.progress,
            "phase_steps": self.phase_steps,
            "log_history": self.log_history,
            "fingerprint": self.fingerprint,
            "identity": self.identity,
        })  # fmt: skip

    def complete_phase(self, phase: Phase, model: Any, by_module: bool = True) -> None:
        """Record `phase` as completed, with the weights it left and its stages pending (see the module docstring).
        `by_module=False` writes the whole model with `save_pretrained` (FSDP gathers it for that)."""
        previous = self.progress
        self.progress = f"{PROGRESS_PREFIX}-{len(self.completed) + 1:02d}"
        if self.writer:
            with atomic_directory(self.root / self.progress) as staging:
                if by_module:
                    before = self.root / previous if previous is not None else None
                    linked = before if before is not None and is_module_folder(before) else None
                    write_module_folder(model, staging, changed=set(phase.modules), previous=linked)
                    self._write_lap_states(staging, set(phase.modules), linked)
                else:
                    model.save_pretrained(staging)
                    if self.lap_states:  # the optimizers that continue in later multilap laps
                        torch.save(self.lap_states, staging / LAP_STATES_FILE)
        self.completed.append(phase.name)
        self.pending = sorted({*self.pending, *(index + 1 for index in phase.final_modules)})
        self.save()
        if self.writer:
            if previous is not None and previous != self.progress:
                remove_tree(self.root / previous)
            remove_tree(phase.output_dir(self.root))
            phases_dir = self.root / PHASES_DIR
            if phases_dir.exists() and not any(phases_dir.iterdir()):
                phases_dir.rmdir()

    def _write_lap_states(self, folder: Path, changed: set[int], previous: Path | None) -> None:
        """The optimizers that continue in later multilap laps, one file per module: those of modules `changed` did
        not train are linked from `previous`."""
        for module, state in self.lap_states.items():
            name = lap_state_filename(module)
            if module not in changed and previous is not None and (previous / name).is_file():
                link_file(previous / name, folder / name)
            else:
                torch.save(state, folder / name)

    def record_stage(self, stage: int) -> None:
        """Record the checksums of a stage just written (it is then never rewritten unless found damaged)."""
        if self.writer:
            self.stages[stage] = stage_checksums(stage_folder(self.root, stage))
        self.pending = [k for k in self.pending if k != stage]
        self.save()

    def remove_stray_progress(self) -> None:
        """Remove progress folders the state does not name (left by a run killed mid-transition)."""
        if not self.writer:
            return
        for folder in self.root.glob(f"{PROGRESS_PREFIX}-*"):
            if re.fullmatch(rf"{PROGRESS_PREFIX}-\d+", folder.name) and folder.name != self.progress:
                remove_tree(folder)


RUN_FILE = "trgl_run.json"


class RunCheckpointCallback(TrainerCallback):
    """Stamps every Trainer checkpoint with the run's fingerprint, so a checkpoint of another run is never resumed."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            write_json(folder / RUN_FILE, {"fingerprint": self.fingerprint})


def check_checkpoint(path: str, phases: list[Phase], root: Path, fingerprint: str) -> Phase:
    """The phase an explicit `resume_from_checkpoint` path belongs to, after checking it is this run's.

    Raises:
        `ValueError`: the folder does not exist, is not a checkpoint of one of this run's phases in `output_dir`, or
            was written by a run of another configuration.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"`resume_from_checkpoint={path!r}` does not exist: pass an existing `checkpoint-*` folder "
                         "of this run, or `True` to resume from the last one.")  # fmt: skip
    phase = next((p for p in phases if folder.parent.resolve() == p.output_dir(root).resolve()), None)
    if phase is None:
        raise ValueError(
            f"{folder} is not a checkpoint of this run's phases (expected {root / PHASES_DIR}/<phase>/checkpoint-N "
            f"with a phase in {[p.name for p in phases]}): pass one of them, or `True`."
        )
    stamp = folder / RUN_FILE
    recorded = json.loads(stamp.read_text()).get("fingerprint") if stamp.exists() else None
    if recorded != fingerprint:
        raise ValueError(
            f"{folder} was written by another run ({recorded or 'no fingerprint'}, this one is {fingerprint}): "
            "resume it with that run's model, configuration, arguments and data, or start a new `output_dir`."
        )
    return phase


__all__ = [
    "PROGRESS_PREFIX",
    "RUN_FILE",
    "STATE_FILE",
    "RunCheckpointCallback",
    "RunState",
    "check_checkpoint",
]
