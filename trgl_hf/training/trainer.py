"""`TRGLTrainer`: trains the modules of a `TRGLModel` greedily, in parallel, sequential or multi-lap mode, one phase
(one `Trainer.train()` loop) at a time, as one run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import TrainOutput

from ..distributed.fsdp import fsdp_settings, hidden_from_accelerate
from ..distributed.processes import is_multiprocess
from ..distributed.strategy import distributed_strategy
from ..hub.push import HubPushError
from ..modeling.modeling_trgl import TRGLModel
from ..modeling.pretrained_defaults import head_settings
from .head_schedule import hold_blocks_during_warmup, scale_head_learning_rate
from .hf_internals import prepare_inputs, reset_accelerator, set_wrapped_model, training_dataloader
from .lap_optimizers import LapOptimizerStore
from .loss_monitor import LossMonitor, NonFiniteLossError
from .module_evaluation import ModuleEvaluationMixin, TRGLPredictionOutput
from .offload import OFFLOAD_DIR, ModuleOffload, offload_decision
from .phase_cache import PhasePrefixCache
from .phase_end import finish_phase, resume_stages
from .phase_inputs import phase_arguments, phase_training_data
from .phases import PHASES_DIR, Phase, plan_phases
from .prefix_cache import PrefixCache, collate_prefix_batch, prefix_cache_decision
from .publishing import StagePublishingMixin
from .run import TrainingRun, finished_checkpoint_output, open_run, pin_log_folders
from .run_callbacks import PhaseProgressCallback, run_callback_handler
from .run_checks import announce_settings, check_datasets, check_trainer_inputs, check_trainer_setup
from .run_markers import write_marker
from .run_state import RunCheckpointCallback
from .selection import (
    check_selection_metric,
    per_module_metrics,
    record_best_stage,
    selection_prefix,
)
from .training_args import TRGLTrainingArguments

logger = logging.getLogger(__name__)


class TRGLTrainer(ModuleEvaluationMixin, StagePublishingMixin, Trainer):
    r"""
    A [`~transformers.Trainer`] that trains every module of a [`TRGLModel`] on its own TRGL loss in one `train()`
    call, following `args.trgl_mode`:

    - `"parallel"`: each batch runs through all modules; each module's loss is backpropagated as soon as it is
      computed, on a detached input, so only one module's graph is alive at a time.
    - `"sequential"`: one module at a time, earlier modules frozen (eval mode, no gradient); their outputs are cached
      once per stage when the input pipeline is deterministic.
    - `"multilap"`: sequential, in `args.trgl_laps` laps.

    Each phase gets a fresh optimizer, scheduler and distributed wrapper, built after `requires_grad` is set.
    Gradients are synchronised across processes by the trainer itself and clipped per module, so modules never
    influence each other's updates. `output_dir/stage-XX` folders are written as modules become final; each loads
    with `AutoModelForImageClassification.from_pretrained`. `evaluate()` reports every module's head
    (`eval_module_{k}_accuracy`, `eval_module_{k}_loss`, `eval_best_module`).

    Args:
        model ([`TRGLModel`]): the cut model.
        args ([`TRGLTrainingArguments`]): training arguments.
        compute_metrics (`Callable`, *optional*): metrics of one head from `EvalPrediction(logits, labels)`; applied
            to every module. Defaults to accuracy.
        hub_api (`huggingface_hub.HfApi`, *optional*): client used to push stages when `args.push_to_hub` is set
            (defaults to `HfApi(token=args.hub_token)`).
        kwargs: the other arguments of [`~transformers.Trainer`].

    Example:
    ```python
    >>> args = TRGLTrainingArguments(output_dir="out", trgl_mode="sequential", num_train_epochs=3)
    >>> trainer = TRGLTrainer(model=model, args=args, train_dataset=train, eval_dataset=validation)
    >>> trainer.train()
    >>> trainer.evaluate()["eval_best_module"]
    ```
    """

    def __init__(self, model: TRGLModel | None = None, args: TRGLTrainingArguments | None = None,
                 hub_api: HfApi | None = None, **kwargs: Any):  # fmt: skip
        args = check_trainer_inputs(model, args, kwargs)
        self.hub_api, self.fsdp_settings = hub_api, fsdp_settings(args)  # FSDP2 per module, applied by this trainer
        self.selection_prefix = selection_prefix(args.metric_for_best_model, kwargs.get("eval_dataset"))
        """Key prefix of the evaluation that picks the best module (`"eval_"`, or `"eval_{set}_"` of a dict)."""
        metrics = per_module_metrics(model, args, kwargs.pop("compute_metrics", None),
                                     kwargs.get("preprocess_logits_for_metrics"), self.selection_prefix)  # fmt: skip
        super().__init__(model=model, args=args, compute_metrics=metrics, **kwargs)
        check_trainer_setup(self)
        self.strategy = distributed_strategy(self.fsdp_settings, self.args.ddp_bucket_cap_mb)
        """How gradients, buffers and saved weights cross processes (`trgl_hf.distributed.strategy`)."""
        self.offloads, self.offload_reason = offload_decision(self.args.trgl_offload, self.args.trgl_mode,
                                                              self.args.device.type, is_multiprocess(),
                                                              self.fsdp_settings is not None)  # fmt: skip
        """Whether inactive modules live in their module files (`trgl_offload`), and why."""
        # The trainer shards the model itself: the Trainer must neither wrap it (DDP, FSDP) nor average its gradients.
        self.is_distributed_loading_by_transformers = self.fsdp_settings is not None
        self.head_settings = head_settings(self.args, self.model.config)
        """The heads' learning-rate multiplier and warm-up steps in effect (`trgl_hf.modeling.pretrained_defaults`)."""
        self.lap_optimizers = LapOptimizerStore(persist=self.args.trgl_lap_optimizer == "persist")
        self.loss_monitor, self.stage_metrics, self.best_module = LossMonitor(), {}, None
        self.run: TrainingRun | None = None
        self.prefix_caches = PhasePrefixCache.for_run(self.args)
        self.phase: Phase | None = None
        self.phase_data: Any = None
        self.hub_push_failures: list[HubPushError] = []
        self._given_optimizers = (self.optimizer, self.lr_scheduler)  # `optimizers=`: kept for the run's one phase
        self.loss_is_scaled_for_ga = False
        announce_settings(self)
        if self.pop_callback(ProgressCallback) is not None:
            self.add_callback(PhaseProgressCallback(self.describe_phase))
        self.callback_handler = run_callback_handler(self.callback_handler, phase_local=RunCheckpointCallback)

    def create_accelerator_and_postprocess(self) -> None:
        """The Trainer's `Accelerator`, without the FSDP plugin when this trainer applies FSDP2 per module itself."""
        with hidden_from_accelerate(self.args, self.fsdp_settings):
            super().create_accelerator_and_postprocess()

    def describe_phase(self) -> str:
        """A short label of the phase being trained, for progress bars."""
        return "" if self.phase is None else self.phase.describe(self.run.phases, self.model.num_modules)

    def plan_phases(self) -> list[Phase]:
        """The phases of `args.trgl_mode`, in order (planned once per `train()` call)."""
        use_cache, _ = self.prefix_cache_decision()
        return plan_phases(self.model.num_modules, self.args.trgl_mode, self.args.trgl_laps,
                           self.args.num_train_epochs, self.args.max_steps, use_cache)  # fmt: skip

    def prefix_cache_decision(self) -> tuple[bool, str]:
        """Whether sequential phases train on cached prefix outputs, and why."""
        if self.fsdp_settings is not None:
            return False, "FSDP: the sharded frozen prefix runs again every step, in step on every process"
        return prefix_cache_decision(self.args.trgl_prefix_cache, self.train_dataset, self.data_collator)

    # ------------------------------------------------------------------ the run

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None,
              ignore_keys_for_eval: Any = None, **kwargs: Any) -> TrainOutput:  # fmt: skip
        """Train every module following `args.trgl_mode`; write the stages; return the run's training output.

        Args:
            resume_from_checkpoint (`str` or `bool`, *optional*):
                `True` resumes the run in `args.output_dir`: finished phases are skipped, the interrupted one resumes
                from its last checkpoint. A path to a `checkpoint-*` folder of a phase resumes from it.
        """
        check_datasets(self)
        check_selection_metric(self)
        self.run = open_run(self, self.plan_phases())
        try:
            state = self.run.begin(resume_from_checkpoint)
            if self.run.resume:
                state.restore(self.model, mapped=self.offloads)
                self.lap_optimizers.states, self.stage_metrics = dict(state.lap_states), dict(state.stage_metrics)
                resume_stages(self)
            state.remove_stray_progress()
            return self._train_phases(trial, ignore_keys_for_eval, **kwargs)
        finally:
            self.hub_push_failures = self.run.close(self.args.trgl_hub_finish_timeout)

    def _train_phases(self, trial: Any, ignore_keys_for_eval: Any, **kwargs: Any) -> TrainOutput:
        """Train the run's pending phases one at a time, then end the run."""
        run, handler, callback = self.run, self.callback_handler, RunCheckpointCallback(self.run.fingerprint)
        self.add_callback(callback)
        pin_log_folders(handler.callbacks, run.root)
        handler.run_args = self.args
        pending = run.pending_phases()
        offload = ModuleOffload(run.root / OFFLOAD_DIR) if self.offloads and pending else None
        if offload is not None:
            logger.info("Offload: %s (trgl_offload=%r).", self.offload_reason, self.args.trgl_offload)
            offload.start(self.model, set(pending[0].modules))
        try:
            for phase in pending:
                self._train_phase(phase, phase is pending[0], offload, trial, ignore_keys_for_eval, **kwargs)
        finally:
            self.remove_callback(callback)
            handler.position = None
            self.prefix_caches.drop(self.accelerator)
            if offload is not None:
                offload.finish()
        return self._end_run()

    def _train_phase(self, phase: Phase, first: bool, offload: ModuleOffload | None, *args: Any, **kwargs: Any):
        """Train one phase with its own arguments and data, record it, and move the offloaded modules on."""
        run, handler = self.run, self.callback_handler
        handler.position = run.position(phase, first)
        with self._phase_scope(phase):
            handler.run_event("on_phase_begin", self.args, handler.position.begin_state(), self.control, phase=phase)
            output = self._phase_loop(phase, *args, **kwargs)
        with self.model.phase(phase.modules, evaluated=phase.evaluated_modules):
            finish_phase(self, phase, output.global_step)
        if offload is not None:
            later, progress = run.pending_phases(after=phase), run.root / run.state.progress
            offload.after_phase(self.model, progress, set(later[0].modules) if later else set())
            self.lap_optimizers.map_from(progress)
        run.add_phase(output, self.state.epoch or 0.0)

    def _phase_loop(self, phase: Phase, trial: Any, ignore_keys_for_eval: Any, **kwargs: Any) -> TrainOutput:
        """`Trainer.train()` for the phase, resumed from its checkpoint when there is one; a checkpoint that already
        holds the phase's last step is loaded, not trained again."""
        checkpoint = self.run.checkpoint_for(phase)
        finished = finished_checkpoint_output(checkpoint) if checkpoint else None
        if finished is None:
            return super().train(resume_from_checkpoint=checkpoint, trial=trial,
                                 ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)  # fmt: skip
        self.state, output = finished
        best = self.state.best_model_checkpoint if self.args.load_best_model_at_end else None
        kept = best if best is not None and Path(best).is_dir() else checkpoint  # what the loop would have ended on
        self.model.load_state_dict(type(self.model).from_pretrained(kept).state_dict())
        self.lap_optimizers.keep_from_checkpoint(phase, Path(checkpoint))
        return output

    @contextmanager
    def _phase_scope(self, phase: Phase) -> Iterator[None]:
        """For the duration of the phase's loop: its modules train, on its data, with its own copy of the arguments
        (the run's are never changed); a fresh optimizer, scheduler and distributed wrapper."""
        run_args, self.phase = self.args, phase
        try:
            with self.model.phase(phase.modules, cached_from=phase.cached_from, evaluated=phase.evaluated_modules):
                self.args = phase_arguments(run_args, phase, self.run.root)
                self.phase_data = phase_training_data(self, phase)
                self.strategy.prepare_phase(self.model, self.args.device)
                self.optimizer, self.lr_scheduler = self._given_optimizers
                set_wrapped_model(self, self.model)
                reset_accelerator(self.accelerator)
                self.loss_monitor.reset()
                yield
        finally:
            self.args, self.phase, self.phase_data = run_args, None, None
            self.strategy.end_phase()

    def _end_run(self) -> TrainOutput:
        """One run for everything around the loop: the Trainer state holds the run's global step and every phase's
        history; `trainer_state.json`, `train_results.json` and `all_results.json` describe the whole run."""
        run, model = self.run, self.model
        model.set_trainable_modules(range(model.num_modules))
        model.config.trained_modules = model.num_modules
        metrics, steps = run.summary(getattr(self.state, "total_flos", 0.0)), int(run.totals["steps"])
        self.state.global_step = self.state.max_steps = steps
        self.state.epoch, self.state.log_history = run.epoch_offset, list(run.log_history)
        record_best_stage(
            self.state, run.root, run.log_history, self.selection_prefix, self.args.metric_for_best_model
        )
        super().log(dict(metrics))  # the run's one summary, at its last step (each phase's own reached no callback)
        run.log_history = list(self.state.log_history)
        self.control = self.callback_handler.run_event("on_train_end", self.args, self.state, self.control)
        if self.args.should_save:
            self.save_run_results(metrics)
        return TrainOutput(steps, metrics["train_loss"], metrics)

    # ------------------------------------------------------------------ one phase's loop

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer (heads at `learning_rate x trgl_head_lr_multiplier`); in a module's later multilap
        laps, with the state its previous lap left."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        multiplier = self.head_settings.lr_multiplier
        if fresh and multiplier != 1.0:
            scale_head_learning_rate(
                optimizer, self.accelerator.unwrap_model(self.model).heads.parameters(), multiplier
            )
        saved = self.lap_optimizers.saved(self.phase) if fresh else None
        if saved is not None:
            optimizer.load_state_dict(saved["optimizer"])
            self.strategy.shard_optimizer_state(optimizer)  # FSDP: a state read back whole from a progress folder
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The Trainer's schedule; in multilap with persistent optimizers, one schedule over all of a module's laps,
        continued from where its previous lap stopped."""
        persist = self.lr_scheduler is None and self.lap_optimizers.applies(self.phase)
        scheduler = super().create_scheduler(num_training_steps * (self.phase.laps if persist else 1), optimizer)
        saved = self.lap_optimizers.saved(self.phase) if persist else None
        if saved is not None:
            scheduler.load_state_dict(saved["scheduler"])
            for group, lr in zip((optimizer or self.optimizer).param_groups, scheduler.get_last_lr()):
                group["lr"] = lr
        return scheduler

    def get_train_dataloader(self) -> DataLoader:
        """The phase's training batches (its prefix cache, its lap's examples); cached prefix outputs are collated by
        stacking (they are already padded)."""
        data = self.train_dataset if self.phase_data is None else self.phase_data
        return training_dataloader(self, data, collate_prefix_batch if isinstance(data, PrefixCache) else None)

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:  # fmt: skip
        """Forward every module; backpropagate each trainable module's loss as soon as it exists."""
        model.train()
        net: TRGLModel = self.accelerator.unwrap_model(model)
        self.strategy.broadcast_buffers(net, net.trainable_modules)
        inputs, sync, step = prepare_inputs(self, inputs), self.accelerator.sync_gradients, self.state.global_step + 1
        accumulation, total, task_losses = (
            self.current_gradient_accumulation_steps,
            torch.zeros((), device=self.args.device),
            {},
        )
        if sync:
            self.strategy.start_step(net)
        with self.compute_loss_context_manager(), self.accelerator.autocast():
            for module in net.iter_modules(frozen_heads=False, **inputs):
                if module.trainable:
                    loss, task_losses[module.index] = module.loss.detach(), module.task_loss.detach()
                    self.loss_monitor.record(
                        module.index, step, loss, task_losses[module.index], module.transport.detach()
                    )
                    self.accelerator.backward(module.loss / accumulation)
                    total += loss
        if sync:
            self.strategy.finish_step(net, task_losses, step)
            hold_blocks_during_warmup(net, self.state.global_step, self.state.max_steps,
                                      self.head_settings.warmup_steps, self.phase)  # fmt: skip
        return total / accumulation

    def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
        """Clip each trainable module's gradients separately to `max_grad_norm`; return the global norm."""
        self.accelerator.unscale_gradients()
        return self.strategy.clip(self.accelerator.unwrap_model(model), self.args.max_grad_norm)

    def check_finite(self, phase_name: str | None = None) -> None:
        """Stop with a [`NonFiniteLossError`] naming the module and the step if a loss was NaN or infinite (checked
        when logs are written, before a checkpoint is saved and when a phase ends)."""
        self.loss_monitor.check(phase_name or (self.phase.name if self.phase else "?"))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Trainer's checkpoint, never of weights a NaN or infinite loss has reached; the run's resume point."""
        self.check_finite()
        super()._save_checkpoint(model, trial)
        if self.args.should_save and self.phase is not None:
            run, local = self.run, f"checkpoint-{self.state.global_step}"
            point = f"{PHASES_DIR}/{self.phase.name}/{local}"
            write_marker(run.root, run.step_offset + self.state.global_step, run.fingerprint, point,
                         source=Path(self.args.output_dir) / local)  # fmt: skip

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add each trained module's task loss and transport cost (averaged since the last log) to training logs."""
        if "loss" in logs:
            self.check_finite()
            logs.update(self.loss_monitor.log_fields())
        if self.phase is not None:
            logs["trgl_phase"] = self.phase.name
        super().log(logs, start_time)  # callbacks see the run's step and epoch (trgl_hf.training.run_callbacks)


__all__ = ["NonFiniteLossError", "TRGLPredictionOutput", "TRGLTrainer"]
