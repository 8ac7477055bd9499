"""One run for callbacks: the phases of a TRGL run reach user callbacks and loggers as one `Trainer` run.

A TRGL run calls the underlying training loop once per phase (one module, or all of them in parallel mode). The
callbacks that belong to one loop (progress bars, the run's checkpoint stamp) see each phase as it is.
`DefaultFlowCallback` sees the run's step with the phase's end as its last step, so logs, evaluations and saves fall on
the run's multiples of `logging_steps`, `eval_steps` and `save_steps`, as in one `Trainer` run (and on each phase's
last step, where its loop ends). Every other callback (the user's, `report_to` loggers, `EarlyStoppingCallback`) sees
one run: `on_train_begin` and `on_train_end` once, a global step and an epoch that only grow, the run's planned total
of steps, the run's log history and one end-of-training summary. Per-phase events are new hooks,
[`TRGLCallback.on_phase_begin`] and [`TRGLCallback.on_phase_end`]. A callback that sets `should_training_stop` (e.g.
`EarlyStoppingCallback`) ends the phase being trained: early stopping applies to each module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback, ProgressCallback

PHASE_SUMMARY_KEY = "train_runtime"
"""A key only the end-of-loop summary log holds: such a log ends a phase, not the run."""


class TRGLCallback(TrainerCallback):
    """A [`~transformers.TrainerCallback`] with two more events, one per phase of a TRGL run.

    `TRGLTrainer` calls the usual events once per run (like `Trainer`); these two are called at each phase (a module's
    training in sequential and multilap modes, all modules at once in parallel mode). Any callback that defines them
    receives them; subclassing is optional.

    Example:
    ```python
    >>> class PhaseLogger(TRGLCallback):
    ...     def on_phase_end(self, args, state, control, phase=None, metrics=None, **kwargs):
    ...         print(phase.name, state.global_step, metrics)
    ```
    """

    def on_phase_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        """Called before a phase trains; `phase` ([`~trgl_hf.training.phases.Phase`]) says which modules train."""

    def on_phase_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        """Called once a phase is recorded: evaluated, its weights saved for resume, the stages it finished written;
        `metrics` holds its evaluation metrics (empty when nothing was evaluated)."""


def shift_entry(entry: dict[str, Any], step_offset: int, epoch_offset: float) -> dict[str, Any]:
    """A log entry (or metrics dict) of a phase, with its `step` and `epoch` counted from the start of the run."""
    shifted = dict(entry)
    if "step" in shifted:
        shifted["step"] = shifted["step"] + step_offset
    if shifted.get("epoch") is not None:
        shifted["epoch"] = round(shifted["epoch"] + epoch_offset, 4)
    return shifted


@dataclass
class RunPosition:
    """Where the phase being trained sits in the run.

    Args:
        step_offset (`int`): optimizer steps of the phases finished before this one.
        epoch_offset (`float`): epochs of the phases finished before this one.
        history (`list[dict]`): the run's log history before this phase (steps already global).
        planned_steps (`Callable[[TrainerState], int]`): the run's total steps, from the phase's state.
        first (`bool`): this is the first phase this `train()` call trains (it delivers `on_train_begin`).
    """

    step_offset: int
    epoch_offset: float
    history: list[dict[str, Any]] = field(default_factory=list)
    planned_steps: Callable[[TrainerState], int] | None = None
    first: bool = True
    _run_history: list[dict[str, Any]] | None = field(default=None, repr=False)
    _phase_entries: int = field(default=0, repr=False)

    def run_history(self, phase_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The run's history: the earlier phases' and this phase's entries shifted, each shifted once (the list is
        extended as the phase logs, not rebuilt at every event)."""
        if self._run_history is None or len(phase_history) < self._phase_entries:  # first call, or history replaced
            self._run_history, self._phase_entries = list(self.history), 0
        for entry in phase_history[self._phase_entries :]:
            self._run_history.append(shift_entry(entry, self.step_offset, self.epoch_offset))
        self._phase_entries = len(phase_history)
        return self._run_history

    def flow_state(self, phase_state: TrainerState) -> TrainerState:
        """A copy of the phase's state counting steps from the start of the run, ending where the phase ends."""
        view = copy.copy(phase_state)
        view.global_step = phase_state.global_step + self.step_offset
        view.max_steps = phase_state.max_steps + self.step_offset
        return view

    def begin_state(self) -> TrainerState:
        """The run's state as a phase begins (before its loop has created its own)."""
        return self.state(TrainerState(log_history=[]))

    def state(self, phase_state: TrainerState) -> TrainerState:
        """A copy of the phase's state as one run's: global step, epoch, max steps and log history of the run."""
        view = copy.copy(phase_state)
        view.global_step = phase_state.global_step + self.step_offset
        view.epoch = round((phase_state.epoch or 0.0) + self.epoch_offset, 4)
        if self.planned_steps is not None:
            view.max_steps = max(self.planned_steps(phase_state), view.global_step)
        view.log_history = self.run_history(phase_state.log_history or [])
        return view


class RunCallbackHandler(CallbackHandler):
    """The Trainer's `CallbackHandler`, presenting the phases of a TRGL run as one run to every callback that is not
    one of `phase_local` types (those drive one phase's loop and see it as it is).

    Args:
        handler (`CallbackHandler`): the Trainer's handler, whose callbacks and references are taken over.
        phase_local (`tuple[type, ...]`): callback types that see each phase as its own loop.
        flow (`tuple[type, ...]`): callback types that decide when to log, evaluate, save and stop: they see the run's
            step and the phase's end (see [`RunPosition.flow_state`]).
    """

    def __init__(self, handler: CallbackHandler, phase_local: tuple[type, ...], flow: tuple[type, ...]):
        super().__init__(handler.callbacks, handler.model, handler.processing_class, handler.optimizer,
                         handler.lr_scheduler)  # fmt: skip
        self.train_dataloader, self.eval_dataloader = handler.train_dataloader, handler.eval_dataloader
        self.phase_local, self.flow = phase_local, flow
        self.position: RunPosition | None = None
        self.run_args: TrainingArguments | None = None

    def is_phase_local(self, callback: TrainerCallback) -> bool:
        return isinstance(callback, (*self.phase_local, *self.flow))

    def call_event(self, event: str, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        position = self.position
        if position is None:
            return super().call_event(event, args, state, control, **kwargs)
        run_view, run_kwargs = None, kwargs
        for callback in self.callbacks:
            if isinstance(callback, self.flow):
                control = self._deliver(callback, event, args, position.flow_state(state), control, kwargs)
                continue
            if self.is_phase_local(callback):
                control = self._deliver(callback, event, args, state, control, kwargs)
                continue
            if not self._reaches_the_run(event, kwargs, position):
                continue
            if run_view is None:
                run_view = position.state(state)
                run_kwargs = {key: self._shifted(key, value, position) for key, value in kwargs.items()}
            control = self._deliver(callback, event, self.run_args or args, run_view, control, run_kwargs)
        return control

    def run_event(self, event: str, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        """Deliver an event of the whole run (its end, a phase's begin or end) to the callbacks that see the run; a
        callback without a method for `event` is skipped."""
        for callback in self.callbacks:
            if not self.is_phase_local(callback) and hasattr(callback, event):
                control = self._deliver(callback, event, self.run_args or args, state, control, kwargs)
        return control

    @staticmethod
    def _reaches_the_run(event: str, kwargs: dict[str, Any], position: RunPosition) -> bool:
        if event == "on_train_begin":
            return position.first
        if event == "on_train_end":  # the run sends its own, once
            return False
        return not (event == "on_log" and PHASE_SUMMARY_KEY in (kwargs.get("logs") or {}))

    @staticmethod
    def _shifted(key: str, value: Any, position: RunPosition) -> Any:
        if key in ("logs", "metrics") and isinstance(value, dict):
            return shift_entry(value, 0, position.epoch_offset)
        return value

    def _deliver(self, callback, event, args, state, control, kwargs) -> TrainerControl:
        result = getattr(callback, event)(
            args, state, control, model=self.model, processing_class=self.processing_class,
            optimizer=self.optimizer, lr_scheduler=self.lr_scheduler, train_dataloader=self.train_dataloader,
            eval_dataloader=self.eval_dataloader, **kwargs,
        )  # fmt: skip
        return control if result is None else result


class PhaseProgressCallback(ProgressCallback):
    """Trainer's progress bar, labelled with the phase being trained (e.g. `module 2/4` or `lap 2 module 1/4`)."""

    def __init__(self, describe: Callable[[], str], max_str_len: int = 100):
        super().__init__(max_str_len)
        self.describe = describe

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.describe())


def run_callback_handler(handler: CallbackHandler, phase_local: type) -> RunCallbackHandler:
    """The Trainer's `handler` as a [`RunCallbackHandler`]: progress bars and `phase_local` see each phase as its own
    loop, `DefaultFlowCallback` the run's step, every other callback one run."""
    return RunCallbackHandler(handler, phase_local=(ProgressCallback, phase_local), flow=(DefaultFlowCallback,))


__all__ = [
    "PhaseProgressCallback",
    "RunCallbackHandler",
    "RunPosition",
    "TRGLCallback",
    "run_callback_handler",
    "shift_entry",
]
