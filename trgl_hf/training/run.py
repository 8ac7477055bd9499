"""One `TRGLTrainer.train()` call as a run: its folder, recorded state, lock and Hub pusher, where each phase starts
(the steps and epochs of the phases before it), the run's log history and its totals, and how it resumes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transformers import Trainer
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import TrainOutput

from ..hub.push import HubPushError
from ..hub.pusher import BackgroundPusher
from .guards import (
    check_output_dir,
    check_writable,
    dataset_fingerprint,
    latest_complete_checkpoint,
    run_fingerprint,
    run_identity,
)
from .hf_internals import default_logging_dir
from .phases import Phase
from .run_callbacks import RunPosition
from .run_checks import named_datasets
from .run_lock import RunLock
from .run_markers import check_marker, read_marker
from .run_state import RunState, check_checkpoint


class TrainingRun:
    """The run in `root`, trained one phase at a time by `TRGLTrainer`.

    Args:
        root (`Path`): the run's `output_dir`.
        phases (`list[Phase]`): the run's plan.
        fingerprint (`str`): what makes two runs the same run (model cut, objective, schedule, data).
        identity (`dict`): the readable parts of the fingerprint, for error messages.
        writer (`bool`): this process writes the run's files (`args.should_save`).
    """

    def __init__(self, root: Path, phases: list[Phase], fingerprint: str, identity: dict, writer: bool):
        self.root, self.phases, self.fingerprint, self.identity, self.writer = (
            root,
            phases,
            fingerprint,
            identity,
            writer,
        )
        self.lock = RunLock(root)
        self.pusher: BackgroundPusher | None = None
        self.state = RunState(root, phases, fingerprint, identity, writer)
        self.resume: bool | str = False
        self.explicit: Phase | None = None  # the phase of a `checkpoint-*` folder given to resume from
        self.step_offset, self.epoch_offset = 0, 0.0
        self.log_history: list[dict[str, Any]] = []
        self.totals = {"steps": 0, "loss": 0.0, "runtime": 0.0, "samples": 0.0}
        self.started = time.time()

    def open(self, main: bool, pusher: BackgroundPusher | None) -> None:
        """Take the run's folder (the main process locks it) and its Hub pusher."""
        if main:
            check_writable(self.root)
            self.lock.acquire()
        self.pusher = pusher

    def close(self, finish_timeout: float | None) -> list[HubPushError]:
        """Release the folder; wait for the pushes (each gets `finish_timeout`); return the pushes that failed."""
        self.lock.release()
        if self.pusher is None:
            return []
        if finish_timeout is not None and self.pusher.held_pushes:  # "end": every push starts now
            finish_timeout *= self.pusher.held_pushes
        failures, self.pusher = self.pusher.finish(timeout=finish_timeout), None
        return failures

    def begin(self, resume_from_checkpoint: Any) -> RunState:
        """The run's state: new, or the recorded one to resume (`True`, or a phase's `checkpoint-*` folder)."""
        check_output_dir(self.root, self.fingerprint, bool(resume_from_checkpoint), self.identity)
        resume = resume_from_checkpoint
        if isinstance(resume, (str, os.PathLike)) and read_marker(resume) is not None:
            check_marker(resume, self.fingerprint)  # get_last_checkpoint(output_dir) found the run's marker
            resume = True
        self.resume = resume
        if resume:
            self.state = RunState.load(self.root, self.phases, self.fingerprint, self.identity, self.writer)
            self._check_resumable(resume)
        self.state.remove_stray_progress()
        self.log_history = list(self.state.log_history)
        self.step_offset = sum(self.state.phase_steps.get(name, 0) for name in self.state.completed)
        self.epoch_offset = max((e.get("epoch") or 0.0 for e in self.log_history), default=0.0)
        self.totals["steps"] = self.step_offset
        return self.state

    def _check_resumable(self, resume: Any) -> None:
        if isinstance(resume, str):
            self.explicit = check_checkpoint(resume, self.phases, self.root, self.fingerprint)
            earlier = [
                p.name for p in self.phases[: self.phases.index(self.explicit)] if p.name not in self.state.completed
            ]
            if earlier:
                raise ValueError(
                    f"{resume} belongs to phase {self.explicit.name}, but the phases before it ({earlier}) are not "
                    f"finished in {self.root}: resume with `True`."
                )
        elif not self.state.completed and not any(
            latest_complete_checkpoint(p.output_dir(self.root)) for p in self.phases
        ):
            raise ValueError(f"`resume_from_checkpoint=True` but {self.root} holds no run to resume (no "
                             "trgl_state.json, no checkpoint): train without it to start the run.")  # fmt: skip

    def pending_phases(self, after: Phase | None = None) -> list[Phase]:
        """The phases not yet completed (after `after`, when given), in order."""
        start = self.phases.index(after) + 1 if after is not None else 0
        return [p for p in self.phases[start:] if p.name not in self.state.completed]

    def checkpoint_for(self, phase: Phase) -> str | None:
        """The Trainer checkpoint `phase` resumes from: the given one, else its latest complete one when resuming."""
        if self.explicit is not None and self.explicit == phase:
            return str(self.resume)
        if self.resume:
            found = latest_complete_checkpoint(phase.output_dir(self.root))
            return str(found) if found is not None else None
        return None

    def position(self, phase: Phase, first: bool) -> RunPosition:
        """Where `phase` starts in the run, for the callbacks that see one run (`trgl_hf.training.run_callbacks`)."""
        later, offset = self.phases[self.phases.index(phase) + 1 :], self.step_offset

        def planned_steps(state: Any) -> int:  # the run's total, with the later phases sized like this one
            per_epoch = state.max_steps / phase.num_train_epochs if phase.max_steps <= 0 else None
            rest = sum(p.max_steps if p.max_steps > 0 or per_epoch is None else round(per_epoch * p.num_train_epochs)
                       for p in later)  # fmt: skip
            return offset + state.max_steps + rest

        return RunPosition(offset, self.epoch_offset, list(self.log_history), planned_steps, first)

    def add_phase(self, output: TrainOutput, epochs: float) -> None:
        """Count a finished phase's steps, epochs, loss, runtime and samples into the run's."""
        self.log_history = list(self.state.log_history)
        self.step_offset += output.global_step
        self.epoch_offset = round(self.epoch_offset + epochs, 4)
        runtime = output.metrics.get("train_runtime", 0.0)
        self.totals["steps"] += output.global_step
        self.totals["loss"] += output.training_loss * output.global_step
        self.totals["runtime"] += runtime
        self.totals["samples"] += output.metrics.get("train_samples_per_second", 0.0) * runtime

    def summary(self, total_flos: float) -> dict[str, float]:
        """The run's one end-of-training summary, as `Trainer.train` logs it (plus `train_wall_time`)."""
        steps, runtime, samples = int(self.totals["steps"]), self.totals["runtime"], self.totals["samples"]
        return {
            "train_runtime": round(runtime, 4),
            "train_wall_time": round(time.time() - self.started, 4),
            "train_loss": self.totals["loss"] / max(steps, 1),
            "train_samples_per_second": round(samples / runtime, 3) if runtime else 0.0,
            "train_steps_per_second": round(steps / runtime, 3) if runtime else 0.0,
            "total_flos": float(total_flos or 0.0),
            "epoch": self.epoch_offset,
        }


def open_run(trainer: Trainer, phases: list[Phase]) -> TrainingRun:
    """The run of `trainer` in its `output_dir`: its plan, fingerprint (model cut, objective, schedule, data), lock and
    Hub pusher."""
    args, config = trainer.args, trainer.model.config
    data = {name: dataset_fingerprint(dataset) for name, dataset in named_datasets(trainer).items()}
    names = [phase.name for phase in phases]
    run = TrainingRun(Path(args.output_dir), phases, run_fingerprint(config, args, names, data),
                      run_identity(config, args, names, data), args.should_save)  # fmt: skip
    pusher = None
    if args.push_to_hub and args.should_save:
        pusher = BackgroundPusher(
            run.root, trainer.hub_repo_id, args.trgl_hub_strategy, api=trainer.hub_api, token=args.hub_token,
            private=args.hub_private_repo, push_at_end=args.hub_strategy == "end",
        )  # fmt: skip
    run.open(trainer.is_world_process_zero(), pusher)
    return run


def finished_checkpoint_output(checkpoint: str) -> tuple[TrainerState, TrainOutput] | None:
    """The state and output of a phase whose last checkpoint already holds its final step (the run was killed after
    it); None when the phase still has steps to train. (`Trainer.train` would train one step too many when resumed
    from the final step.)"""
    path = Path(checkpoint) / "trainer_state.json"
    recorded = json.loads(path.read_text())
    if recorded.get("global_step", 0) < (recorded.get("max_steps") or float("inf")):
        return None
    state = TrainerState.load_from_json(str(path))
    history = state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]  # the logged means, as the loop's mean
    loss = next((e["train_loss"] for e in reversed(history) if "train_loss" in e), None)
    loss = loss if loss is not None else (sum(losses) / len(losses) if losses else 0.0)
    runtime = next((e["train_runtime"] for e in reversed(history) if "train_runtime" in e), 0.0)
    return state, TrainOutput(state.global_step, loss, {"train_runtime": runtime})


def pin_log_folders(callbacks: list[Any], root: Path) -> None:
    """Loggers that write under `output_dir` (TensorBoard) write under the run's folder, not a phase's (phase folders
    are removed as phases finish), one folder for the whole run."""
    for callback in callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(root / default_logging_dir())
