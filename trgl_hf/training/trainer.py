"""`TRGLTrainer`: trains the modules of a `TRGLModel` greedily, in parallel, sequential or multi-lap mode."""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from huggingface_hub import HfApi
from torch import nn
from torch.utils.data import DataLoader, Subset
from transformers import EvalPrediction, Trainer
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import DefaultFlowCallback, ProgressCallback, TrainerState
from transformers.trainer_utils import PredictionOutput, TrainOutput

from ..distributed.fsdp import (
    average_task_losses,
    check_fsdp_setup,
    fsdp_settings,
    full_lap_states,
    gathered_for_saving,
    hidden_from_accelerate,
    local_norm,
    shard_modules,
    shard_optimizer_state,
)
from ..distributed.grad_sync import DEFAULT_BUCKET_BYTES, GradientAverager
from ..distributed.processes import is_multiprocess
from ..export.checkpointing import save_stage, stage_dirname
from ..export.model_cards import PLOT_FILE, load_arguments, module_plot_svg, module_table, run_model_card
from ..export.peft_adapters import ADAPTER_DIR, exports_stage_adapters, save_stage_adapter
from ..hub.push import HubPushError, find_stage_folders, push_run_card, push_run_stages
from ..hub.pusher import BackgroundPusher
from ..modeling.modeling_trgl import TRGLModel
from ..modeling.pretrained_defaults import head_settings
from .data import check_labels
from .guards import (
    check_hub_credentials,
    check_one_world,
    check_output_dir,
    check_writable,
    dataset_fingerprint,
    finite_metrics,
    latest_complete_checkpoint,
    run_fingerprint,
    run_identity,
)
from .hf_internals import (
    collator_without_unused_columns,
    default_logging_dir,
    prepare_inputs,
    remove_unused_columns,
    reset_accelerator,
    set_wrapped_model,
)
from .input_checks import (
    check_batch_fits,
    check_model_inputs,
    check_sequence_lengths,
    check_streaming,
    first_rows,
    is_iterable,
)
from .metrics import PerModuleLanguageModelMetrics, PerModuleMetrics
from .offload import OFFLOAD_DIR, ModuleOffload, offload_decision
from .phases import PHASES_DIR, Phase, lap_order, plan_phases
from .prefix_cache import (
    TOKEN_COLUMNS,
    PrefixCache,
    build_prefix_cache,
    collate_prefix_batch,
    compute_prefix_outputs,
    parse_bytes,
    prefix_cache_decision,
)
from .run_callbacks import RunCallbackHandler, RunPosition, shift_entry
from .run_lock import RunLock
from .run_markers import check_marker, read_marker, write_marker
from .run_state import STATE_FILE, RunCheckpointCallback, RunState, check_checkpoint
from .training_args import TRGLTrainingArguments

logger = logging.getLogger(__name__)


class TRGLPredictionOutput(PredictionOutput):
    """`Trainer.predict`'s output (predictions, label_ids, metrics) for one module, with `module_predictions` (every
    module's logits) and `module` (which module `predictions` come from)."""


class NonFiniteLossError(ValueError):
    """A module's loss became NaN or infinite during training."""


class PhaseProgressCallback(ProgressCallback):
    """Trainer's progress bar, labelled with the phase being trained (e.g. `module 2/4` or `lap 2 module 1/4`)."""

    def __init__(self, describe: Callable[[], str], max_str_len: int = 100):
        super().__init__(max_str_len)
        self.describe = describe

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.describe())


class TRGLTrainer(Trainer):
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

    def __init__(
        self,
        model: TRGLModel | None = None,
        args: TRGLTrainingArguments | None = None,
        hub_api: HfApi | None = None,
        **kwargs: Any,
    ):
        if not isinstance(model, TRGLModel):
            raise ValueError(
                f"TRGLTrainer trains a TRGLModel, got {type(model).__name__}: wrap it first with "
                "`TRGLModel.from_base(model, TRGLConfig(...))`."
            )
        if args is None:
            args = TRGLTrainingArguments(output_dir="trgl_output")
        if not isinstance(args, TRGLTrainingArguments):
            raise ValueError("TRGLTrainer needs `TRGLTrainingArguments` (they add `trgl_mode` and friends).")
        self.hub_api = hub_api
        adopt_label_smoothing(model, args)
        self._fsdp = fsdp_settings(args)  # FSDP2 per module, applied by this trainer (trgl_hf.distributed.fsdp)
        check_writable(args.output_dir)
        check_streaming(kwargs.get("train_dataset"), args)
        check_given_optimizers(kwargs.get("optimizers"), model, args, fsdp=self._fsdp is not None)
        self.selection_prefix = selection_prefix(args.metric_for_best_model, kwargs.get("eval_dataset"))
        """Key prefix of the evaluation that picks the best module (`"eval_"`, or `"eval_{set}_"` of a dict)."""
        metrics = per_module_metrics(model, args, kwargs.pop("compute_metrics", None),
                                     kwargs.get("preprocess_logits_for_metrics"), self.selection_prefix)  # fmt: skip
        super().__init__(model=model, args=args, compute_metrics=metrics, **kwargs)
        check_one_world(self.args)
        check_fsdp_setup(self._fsdp, self.accelerator, model)
        self.offloads, self.offload_reason = offload_decision(self.args.trgl_offload, self.args.trgl_mode,
                                                              self.args.device.type, is_multiprocess(),
                                                              self._fsdp is not None)  # fmt: skip
        """Whether inactive modules live in their module files (`trgl_offload`), and why."""
        # The trainer shards the model itself: the Trainer must neither wrap it (DDP, FSDP) nor average its gradients.
        self.is_distributed_loading_by_transformers = self._fsdp is not None
        self.best_module: int | None = None
        self._given_optimizers = (self.optimizer, self.lr_scheduler)  # `optimizers=`: kept for the run's one phase
        self._lap_states: dict[int, dict[str, Any]] = {}
        self._step_offset, self._epoch_offset = 0, 0.0
        self.loss_is_scaled_for_ga = False
        self.trgl_log_history: list[dict[str, Any]] = []
        self.stage_metrics: dict[int, dict[str, float]] = {}
        self._module_sums: dict[int, list] = {}  # module -> [task loss sum, transport sum, count], kept on device
        self._first_nonfinite: dict[int, torch.Tensor] = {}  # module -> first step with a NaN / inf loss, on device
        self._nonfinite_values: dict[int, torch.Tensor] = {}
        self._phase: Phase | None = None
        self._prefix_cache: PrefixCache | None = None
        self._averager: GradientAverager | None = None
        self._run_root = Path(self.args.output_dir)
        self._pusher: BackgroundPusher | None = None
        self.hub_push_failures: list[HubPushError] = []
        self.head_settings = head_settings(self.args, self.model.config)
        """The heads' learning-rate multiplier and warm-up steps in effect (`trgl_hf.modeling.pretrained_defaults`)."""
        if self.head_settings.source != "as given":
            logger.info("Auxiliary heads at learning_rate x %g with %d head-only warm-up steps per phase: %s.",
                        self.head_settings.lr_multiplier, self.head_settings.warmup_steps,
                        self.head_settings.source)  # fmt: skip
        config = self.model.config
        check_stage_selection(self.args, model.num_modules)
        if config.peft_config and config.aux_head != "native" and self.args.saves_any_stage():
            logger.info(
                "LoRA base with aux_head=%r: stages are written with the adapters merged, not also as PEFT adapters "
                "(an adapter applies to the native truncated model, whose head is not this one). Pass "
                "aux_head='native' to TRGLConfig for adapter exports.", config.aux_head,
            )  # fmt: skip
        if self.processing_class is None and self.args.saves_any_stage():
            logger.warning(
                "No `processing_class` (tokenizer / image processor) was given to TRGLTrainer: the stage folders will "
                "hold none, and `pipeline(model=stage_dir)` cannot run them. Pass the one used to prepare the data."
            )
        if self.pop_callback(ProgressCallback) is not None:
            self.add_callback(PhaseProgressCallback(self.describe_phase))
        self.callback_handler = RunCallbackHandler(
            self.callback_handler, phase_local=(ProgressCallback, RunCheckpointCallback), flow=(DefaultFlowCallback,)
        )

    def create_accelerator_and_postprocess(self) -> None:
        """The Trainer's `Accelerator`, without the FSDP plugin when this trainer applies FSDP2 per module itself."""
        with hidden_from_accelerate(self.args, self._fsdp):
            super().create_accelerator_and_postprocess()

    # ------------------------------------------------------------------ planning

    def describe_phase(self) -> str:
        """A short label of the phase being trained, for progress bars."""
        if self._phase is None:
            return ""
        return self._phase.describe(self._phases, self.model.num_modules)

    def plan_phases(self) -> list[Phase]:
        """The phases of `args.trgl_mode`, in order (planned once per `train()` call)."""
        use_cache, _ = self.prefix_cache_decision()
        return plan_phases(self.model.num_modules, self.args.trgl_mode, self.args.trgl_laps,
                           self.args.num_train_epochs, self.args.max_steps, use_cache)  # fmt: skip

    def prefix_cache_decision(self) -> tuple[bool, str]:
        """Whether sequential phases train on cached prefix outputs, and why."""
        if self._fsdp is not None:
            return False, "FSDP: the sharded frozen prefix runs again every step, in step on every process"
        return prefix_cache_decision(self.args.trgl_prefix_cache, self.train_dataset, self.data_collator)

    # ------------------------------------------------------------------ training

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: Any = None,
        **kwargs: Any,
    ) -> TrainOutput:
        """Train every module following `args.trgl_mode`; write the stages; return the summed training output.

        Args:
            resume_from_checkpoint (`str` or `bool`, *optional*):
                `True` resumes the run in `args.output_dir`: finished phases are skipped, the interrupted one resumes
                from its last checkpoint. A path to a `checkpoint-*` folder of a phase resumes from it.
        """
        model: TRGLModel = self.model
        num_labels = model.backbone.config.vocab_size if model.task.is_language_model else model.config.num_labels
        eval_sets = self.eval_dataset if isinstance(self.eval_dataset, dict) else {"": self.eval_dataset}
        datasets = {
            "train_dataset": self.train_dataset,
            **{f"eval_dataset[{key!r}]" if key else "eval_dataset": value for key, value in eval_sets.items()},
        }
        check_streaming(self.train_dataset, self.args)
        collate = collator_without_unused_columns(self, self.data_collator, description="label check")
        for name, dataset in datasets.items():
            dataset = first_rows(dataset) if is_iterable(dataset) else dataset  # streams: checked on their first rows
            check_labels(dataset, num_labels, name, model.task, collate)
            check_sequence_lengths(dataset, model, name)
            check_model_inputs(dataset, model, name)
        check_batch_fits(self.train_dataset, self.args, "train_dataset")
        check_hub_credentials(self.args, self.hub_api)
        self.check_selection_metric()
        self._phases = phases = self.plan_phases()
        root = Path(self.args.output_dir)
        data = {name: dataset_fingerprint(dataset) for name, dataset in datasets.items()}
        identity = run_identity(model.config, self.args, [p.name for p in phases], data)
        self.fingerprint = run_fingerprint(model.config, self.args, [p.name for p in phases], data)
        lock = RunLock(root)
        if self.is_world_process_zero():
            check_writable(root)
            lock.acquire()
        if self.args.push_to_hub and self.args.should_save:
            self._pusher = BackgroundPusher(
                root, self.hub_repo_id, self.args.trgl_hub_strategy, api=self.hub_api, token=self.args.hub_token,
                private=self.args.hub_private_repo, push_at_end=self.args.hub_strategy == "end",
            )  # fmt: skip
        try:
            output = self._train_phases(
                root, phases, identity, resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs
            )
        finally:
            lock.release()
            if self._pusher is not None:
                bound = self.args.trgl_hub_finish_timeout
                if bound is not None and self._pusher.held_pushes:  # "end": every push starts now, each gets the bound
                    bound *= self._pusher.held_pushes
                self.hub_push_failures = self._pusher.finish(timeout=bound)
                self._pusher = None
        return output

    def _train_phases(
        self, root: Path, phases: list[Phase], identity: dict, resume_from_checkpoint: Any, trial: Any,
        ignore_keys_for_eval: Any, **kwargs: Any,
    ) -> TrainOutput:  # fmt: skip
        model: TRGLModel = self.model
        self._run_root = root
        check_output_dir(root, self.fingerprint, bool(resume_from_checkpoint), identity)
        writer = self.args.should_save
        if isinstance(resume_from_checkpoint, (str, os.PathLike)) and read_marker(resume_from_checkpoint) is not None:
            check_marker(resume_from_checkpoint, self.fingerprint)  # get_last_checkpoint(output_dir) found the run
            resume_from_checkpoint = True
        if resume_from_checkpoint:
            run = RunState.load(root, phases, self.fingerprint, identity, writer)
            explicit = None
            if isinstance(resume_from_checkpoint, str):
                explicit = check_checkpoint(resume_from_checkpoint, phases, root, self.fingerprint)
                earlier = [p.name for p in phases[: phases.index(explicit)] if p.name not in run.completed]
                if earlier:
                    raise ValueError(
                        f"{resume_from_checkpoint} belongs to phase {explicit.name}, but the phases before it "
                        f"({earlier}) are not finished in {root}: resume with `True`."
                    )
            elif not run.completed and not any(latest_complete_checkpoint(p.output_dir(root)) for p in phases):
                raise ValueError(f"`resume_from_checkpoint=True` but {root} holds no run to resume (no "
                                 f"trgl_state.json, no checkpoint): train without it to start the run.")  # fmt: skip
            run.restore(model, mapped=self.offloads)
            self._lap_states = dict(run.lap_states)
            self.stage_metrics = dict(run.stage_metrics)
            self._repair_stages(run, phases)
            if self._pusher is not None:  # pushes the killed run may not have finished; unchanged files are no-ops
                for stage in sorted(set(run.stages) - set(run.pending)):
                    self._pusher.submit_stage(stage, root / stage_dirname(stage), final=stage == model.num_modules)
        else:
            run = RunState(root, phases, self.fingerprint, identity, writer)
            explicit = None
        run.remove_stray_progress()
        _, cache_reason = self.prefix_cache_decision()
        self.trgl_log_history = list(run.log_history)
        self._step_offset = sum(run.phase_steps.get(name, 0) for name in run.completed)
        self._epoch_offset = max((e.get("epoch") or 0.0 for e in self.trgl_log_history), default=0.0)
        totals = {"steps": self._step_offset, "loss": 0.0, "runtime": 0.0, "samples": 0.0}
        output, started = None, time.time()
        callback = RunCheckpointCallback(self.fingerprint)
        self.add_callback(callback)
        self._pin_log_folders(root)
        handler: RunCallbackHandler = self.callback_handler
        handler.run_args, first = copy.copy(self.args), True
        offload = ModuleOffload(root / OFFLOAD_DIR) if self.offloads else None
        pending = [p for p in phases if p.name not in run.completed]
        if offload is not None and pending:
            logger.info("Offload: %s (trgl_offload=%r).", self.offload_reason, self.args.trgl_offload)
            offload.start(model, set(pending[0].modules))
        try:
            for phase in phases:
                if phase.name in run.completed:
                    continue
                handler.position = self._run_position(phase, first)
                first = False
                with self._phase_scope(phase, root, cache_reason):
                    handler.run_event("on_phase_begin", self.args, handler.position.begin_state(), self.control,
                                      phase=phase)  # fmt: skip
                    checkpoint = None
                    if explicit is not None and explicit == phase:
                        checkpoint = str(resume_from_checkpoint)
                    elif resume_from_checkpoint:
                        found = latest_complete_checkpoint(phase.output_dir(root))
                        checkpoint = str(found) if found is not None else None
                    output = self._completed_checkpoint(checkpoint) if checkpoint else None
                    if output is None:
                        output = super().train(resume_from_checkpoint=checkpoint, trial=trial,
                                               ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)  # fmt: skip
                with model.phase(phase.modules, evaluated=phase.evaluated_modules):
                    self._finish_phase(phase, run, root, output.global_step)
                if offload is not None:
                    later = [p for p in phases[phases.index(phase) + 1 :] if p.name not in run.completed]
                    offload.after_phase(model, root / run.progress, set(later[0].modules) if later else set())
                    self._lap_states = offload.map_lap_states(root / run.progress, self._lap_states)
                self.trgl_log_history = list(run.log_history)
                self._step_offset += output.global_step
                self._epoch_offset = round(self._epoch_offset + (self.state.epoch or 0.0), 4)
                runtime = output.metrics.get("train_runtime", 0.0)
                totals["steps"] += output.global_step
                totals["loss"] += output.training_loss * output.global_step
                totals["runtime"] += runtime
                totals["samples"] += output.metrics.get("train_samples_per_second", 0.0) * runtime
        finally:
            self.remove_callback(callback)
            handler.position = None
            self._drop_prefix_cache()
            if offload is not None:
                offload.finish()
        return self._end_run(root, totals, started, output)

    def _run_position(self, phase: Phase, first: bool) -> RunPosition:
        """Where `phase` starts in the run, for the callbacks that see one run (`trgl_hf.training.run_callbacks`)."""
        later = self._phases[self._phases.index(phase) + 1 :]

        def planned_steps(state: Any) -> int:  # the run's total, with the later phases sized like this one
            per_epoch = state.max_steps / phase.num_train_epochs if phase.max_steps <= 0 else None
            rest = sum(p.max_steps if p.max_steps > 0 or per_epoch is None else round(per_epoch * p.num_train_epochs)
                       for p in later)  # fmt: skip
            return self._step_offset + state.max_steps + rest

        return RunPosition(self._step_offset, self._epoch_offset, list(self.trgl_log_history), planned_steps, first)

    def check_selection_metric(self) -> None:
        """Before training: score one evaluation batch with the run's metrics, so that a `metric_for_best_model` they
        do not report is refused now rather than after the first module has trained (the model is unchanged; the
        random number generators are restored).

        Raises:
            `ValueError`: naming the metrics that are reported.
        """
        selection, prefix = self.args.metric_for_best_model, self.selection_prefix
        eval_set = self.eval_dataset
        if isinstance(eval_set, dict):
            eval_set = eval_set[prefix[len("eval_") : -1]]
        if selection is None or eval_set is None or self._fsdp is not None:
            return
        if isinstance(self.eval_dataset, dict) and not selection.startswith(prefix):
            raise ValueError(
                f"`metric_for_best_model={selection!r}` but `eval_dataset` is a dict of sets, whose metrics are named "
                f"`eval_<set>_<metric>`: name the set that chooses, e.g. '{prefix}{selection.split('eval_')[-1]}'."
            )
        name = selection[len(prefix) :] if selection.startswith(prefix) else selection
        rows = self.args.per_device_eval_batch_size
        sample = first_rows(eval_set, rows) if is_iterable(eval_set) else (
            eval_set.select(range(min(rows, len(eval_set)))) if hasattr(eval_set, "select") else
            Subset(eval_set, range(min(rows, len(eval_set)))))  # fmt: skip
        model, was_training = self.model, self.model.training
        if hasattr(sample, "column_names"):
            sample = remove_unused_columns(self, sample, description="metric check")
        collate = collator_without_unused_columns(self, self.data_collator, description="metric check")
        with torch.random.fork_rng(devices=[]):  # not get_eval_dataloader: it would cache this one-batch loader
            batch = next(iter(DataLoader(sample, batch_size=rows, collate_fn=collate)))
            model.eval()
            try:
                loss, logits, labels = self.prediction_step(model, batch, prediction_loss_only=False)
            finally:
                model.train(was_training)
        include = self.args.include_for_metrics
        extra = {"inputs": batch.get(self.model.main_input_name) if "inputs" in include else None,
                 "losses": loss.reshape(1) if "loss" in include and loss is not None else None}  # fmt: skip
        if self.args.batch_eval_metrics:  # tensors, as Trainer passes them batch by batch
            reported = self.compute_metrics(EvalPrediction(logits, labels, **extra), compute_result=True)
        else:  # raises for a selection metric the module heads' metrics do not report
            extra = {key: value.cpu().numpy() if torch.is_tensor(value) else value for key, value in extra.items()}
            reported = self.compute_metrics(EvalPrediction(logits.cpu().numpy(), labels.cpu().numpy(), **extra))
        if name != "loss" and name not in reported:
            raise ValueError(
                f"`metric_for_best_model={selection!r}` is not among the evaluation metrics "
                f"({sorted({'loss', *(k for k in reported if not k.startswith('module_'))})}): set it to one of them, "
                "or return it from `compute_metrics`."
            )

    def _pin_log_folders(self, root: Path) -> None:
        """Loggers that write under `output_dir` (TensorBoard) write under the run's folder, not a phase's (phase
        folders are removed as phases finish), one folder for the whole run."""
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                callback.logging_dir = str(root / default_logging_dir())

    def _end_run(self, root: Path, totals: dict[str, float], started: float, output: Any) -> TrainOutput:
        """One run for everything around the loop: the Trainer state holds the run's global step and every phase's
        history; `trainer_state.json`, `train_results.json` and `all_results.json` describe the whole run."""
        model: TRGLModel = self.model
        model.set_trainable_modules(range(model.num_modules))
        model.config.trained_modules = model.num_modules
        steps, runtime = int(totals["steps"]), totals["runtime"]
        metrics = {
            "train_runtime": round(runtime, 4),
            "train_wall_time": round(time.time() - started, 4),
            "train_loss": totals["loss"] / max(steps, 1),
            "train_samples_per_second": round(totals["samples"] / runtime, 3) if runtime else 0.0,
            "train_steps_per_second": round(steps / runtime, 3) if runtime else 0.0,
            "total_flos": float(getattr(self.state, "total_flos", 0.0) or 0.0),
        }
        metrics["epoch"] = self._epoch_offset
        self.state.global_step = self.state.max_steps = steps
        self.state.epoch = self._epoch_offset
        self.state.log_history = list(self.trgl_log_history)
        self._record_best_stage(root)
        super().log(dict(metrics))  # the run's one summary, at its last step (each phase's own reached no callback)
        self.trgl_log_history = list(self.state.log_history)
        self.control = self.callback_handler.run_event("on_train_end", self.args, self.state, self.control)
        if self.args.should_save:
            self.state.save_to_json(str(root / "trainer_state.json"))
            self.save_metrics("train", metrics)
            evaluation = self._last_selection_evaluation()
            if evaluation is not None:
                self.save_metrics("eval", {k: v for k, v in evaluation.items() if k.startswith("eval_")})
            self.create_model_card()
            if self._pusher is not None and self.args.trgl_hub_strategy == "subfolder":
                self._pusher.submit_run_card(self._run_card_files())
        return TrainOutput(steps, metrics["train_loss"], metrics)

    def _last_selection_evaluation(self) -> dict[str, Any] | None:
        """The run's last evaluation of the set that chooses the best module (see `selection_prefix`)."""
        best_key = f"{self.selection_prefix}best_module"
        return next((entry for entry in reversed(self.trgl_log_history) if best_key in entry), None)

    def _record_best_stage(self, root: Path) -> None:
        """`state.best_model_checkpoint` and `best_metric`: the stage folder of the best module
        (by `metric_for_best_model`, as `evaluate()` chose it), as `Trainer` names its best checkpoint; None when no
        module was evaluated or no stage was written. (Phase checkpoints are removed once their phase is recorded.)"""
        state = self.state
        state.best_model_checkpoint = state.best_metric = state.best_global_step = None
        best_key = f"{self.selection_prefix}best_module"
        evaluation = self._last_selection_evaluation()
        if evaluation is None or self.args.metric_for_best_model is None:
            return
        best = int(evaluation[best_key])
        folder = root / stage_dirname(best)
        metric = next((v for k, v in evaluation.items() if k.startswith(f"{best_key}_")), None)
        if folder.is_dir():
            state.best_model_checkpoint, state.best_metric = str(folder), metric

    def _completed_checkpoint(self, checkpoint: str) -> TrainOutput | None:
        """The output of a phase whose last checkpoint already holds its final step (the run was killed after it),
        with the checkpoint's weights loaded; None when the phase still has steps to train. (`Trainer.train` would
        train one step too many when resumed from the final step.)"""
        trainer_state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        if trainer_state.get("global_step", 0) < (trainer_state.get("max_steps") or float("inf")):
            return None
        model: TRGLModel = self.model
        self.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        best = self.state.best_model_checkpoint if self.args.load_best_model_at_end else None
        kept = best if best is not None and Path(best).is_dir() else checkpoint  # what the loop would have ended on
        model.load_state_dict(type(model).from_pretrained(kept).state_dict())
        phase = self._phase
        if self._persists_laps(phase) and phase.lap < phase.laps:  # the optimizer this module's next lap continues
            self._lap_states[phase.modules[0]] = {
                name: torch.load(Path(checkpoint) / f"{name}.pt", weights_only=True)
                for name in ("optimizer", "scheduler")
            }
        history = self.state.log_history
        losses = [entry["loss"] for entry in history if "loss" in entry]  # the logged means, as the loop's mean
        loss = next((e["train_loss"] for e in reversed(history) if "train_loss" in e), None)
        loss = loss if loss is not None else (sum(losses) / len(losses) if losses else 0.0)
        runtime = next((e["train_runtime"] for e in reversed(history) if "train_runtime" in e), 0.0)
        return TrainOutput(self.state.global_step, loss, {"train_runtime": runtime})

    @contextmanager
    def _phase_scope(self, phase: Phase, root: Path, cache_reason: str) -> Iterator[None]:
        """Everything a phase changes, applied for the duration of the phase's training loop and then undone: the
        trained modules, the training data (the prefix cache), the folder, epochs and steps of the Trainer."""
        model: TRGLModel = self.model
        saved = (self.args.output_dir, self.args.num_train_epochs, self.args.max_steps, self.train_dataset,
                 self.args.train_sampling_strategy)  # fmt: skip
        self._phase = phase
        try:
            with model.phase(phase.modules, cached_from=phase.cached_from, evaluated=phase.evaluated_modules):
                if phase.cached_from is not None:
                    logger.info("%s: caching the frozen prefix's outputs once (%s).", phase.name, cache_reason)
                    with torch.random.fork_rng(devices=[]):  # its loaders draw seeds: the uncached run does not
                        self.train_dataset = self._build_prefix_cache(phase)
                elif min(phase.modules) > 0 and self.args.trgl_mode != "parallel":
                    logger.info("%s: recomputing the frozen prefix every step (%s).", phase.name, cache_reason)
                self._reset_for_phase()
                self.args.output_dir = str(phase.output_dir(root))
                self.args.num_train_epochs, self.args.max_steps = phase.num_train_epochs, phase.max_steps
                if phase.laps > 1:
                    self._continue_data_order(phase)
                yield
        finally:
            (self.args.output_dir, self.args.num_train_epochs, self.args.max_steps, self.train_dataset,
             self.args.train_sampling_strategy) = saved  # fmt: skip
            self._drop_gradient_averager()  # its hooks belong to this phase's trainable parameters
            self._phase = None

    # ------------------------------------------------------------------ one optimizer per module across laps

    def _persists_laps(self, phase: Phase | None) -> bool:
        return phase is not None and phase.laps > 1 and self.args.trgl_lap_optimizer == "persist"

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer (heads at `learning_rate x trgl_head_lr_multiplier`); in a module's later multilap
        laps, with the state its previous lap left."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.head_settings.lr_multiplier != 1.0:
            self._scale_head_learning_rate(optimizer)
        saved = self._lap_states.get(self._phase.modules[0]) if fresh and self._persists_laps(self._phase) else None
        if saved is not None:
            optimizer.load_state_dict(saved["optimizer"])
            shard_optimizer_state(optimizer, self._fsdp)  # FSDP: a state read back whole from a progress folder
        return optimizer

    def _scale_head_learning_rate(self, optimizer: torch.optim.Optimizer) -> None:
        """Split every parameter group into its block and head parameters; the heads' group gets the scaled lr."""
        heads = {id(p) for p in self.accelerator.unwrap_model(self.model).heads.parameters()}
        groups = []
        for group in optimizer.param_groups:
            settings = {key: value for key, value in group.items() if key != "params"}
            blocks = [p for p in group["params"] if id(p) not in heads]
            head_params = [p for p in group["params"] if id(p) in heads]
            if blocks:
                groups.append({**settings, "params": blocks})
            if head_params:
                scaled = group["lr"] * self.head_settings.lr_multiplier
                groups.append({**settings, "params": head_params, "lr": scaled})
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The Trainer's schedule; in multilap with persistent optimizers, one schedule over all of a module's laps,
        continued from where its previous lap stopped."""
        fresh, phase = self.lr_scheduler is None, self._phase
        persist = fresh and self._persists_laps(phase)
        scheduler = super().create_scheduler(num_training_steps * (phase.laps if persist else 1), optimizer)
        saved = self._lap_states.get(phase.modules[0]) if persist else None
        if saved is not None:
            scheduler.load_state_dict(saved["scheduler"])
            for group, lr in zip((optimizer or self.optimizer).param_groups, scheduler.get_last_lr()):
                group["lr"] = lr
        return scheduler

    def _keep_lap_state(self, phase: Phase) -> None:
        """After a module's non-final lap: keep its optimizer and schedule for its next lap."""
        if self._persists_laps(phase) and phase.lap < phase.laps and self.optimizer is not None:
            state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.lr_scheduler.state_dict()}
            self._lap_states[phase.modules[0]] = state

    def _continue_data_order(self, phase: Phase) -> None:
        """Multilap: the lap trains on the next examples of one uninterrupted sequence of seeded epochs (lap 2 starts
        where lap 1 stopped), read in that order, instead of restarting the sampler at the first epoch every lap."""
        dataset, args = self.train_dataset, self.args
        if is_iterable(dataset):  # a stream: lap l reads on from where lap l-1 stopped, where it can skip
            per_lap = phase.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
            per_lap *= max(args.world_size, 1)
            if hasattr(dataset, "skip"):
                self.train_dataset = dataset.skip((phase.lap - 1) * per_lap)
            elif phase.lap == 2:
                logger.warning("The iterable train_dataset has no `skip`: every lap reads it from its beginning.")
            return
        if phase.max_steps > 0:
            per_lap = phase.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
            per_lap *= max(args.world_size, 1)
        else:
            per_lap = max(1, round(phase.num_train_epochs * len(dataset)))
            args.num_train_epochs = 1
        seed = args.data_seed if args.data_seed is not None else args.seed
        indices = lap_order(len(dataset), seed, (phase.lap - 1) * per_lap, per_lap)
        self.train_dataset = dataset.select(indices) if hasattr(dataset, "select") else Subset(dataset, indices)
        args.train_sampling_strategy = "sequential"

    def _reset_for_phase(self) -> None:
        """Fresh optimizer, scheduler, gradient averager and distributed wrapper for the next phase."""
        self._drop_gradient_averager()
        if self._fsdp is not None:  # sharded the first time; before every optimizer, the trained parameters are set
            shard_modules(self.model, self._fsdp, self.args.device)
        self.optimizer, self.lr_scheduler = self._given_optimizers
        set_wrapped_model(self, self.model)
        reset_accelerator(self.accelerator)
        self._module_sums = {}
        self._first_nonfinite, self._nonfinite_values = {}, {}

    def get_train_dataloader(self) -> DataLoader:
        """The training batches; cached prefix outputs are collated by stacking (they are already padded)."""
        if not isinstance(self.train_dataset, PrefixCache):
            return super().get_train_dataloader()
        saved = self.data_collator, self.args.remove_unused_columns
        self.data_collator, self.args.remove_unused_columns = collate_prefix_batch, False  # it holds only inputs
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator, self.args.remove_unused_columns = saved

    def _build_prefix_cache(self, phase: Phase) -> PrefixCache:
        """The outputs of modules 1..k-1 for phase k: from the previous phase's cache when it holds module k-2's
        outputs (one module runs), else from the raw data. Each process of a machine computes its share of the rows."""
        model: TRGLModel = self.model
        args, first = self.args, phase.cached_from
        previous = self._prefix_cache
        model.to(args.device)
        self._broadcast_buffers()
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", args.world_size or 1))
        local_rank = self.accelerator.local_process_index
        if previous is not None and previous.first_module == first - 1 and previous.lap == phase.lap:
            rows = int(previous.starts[-1])
            start, stop = rows * local_rank // local_world, rows * (local_rank + 1) // local_world
            batches = (prepare_inputs(self, b) for b in previous.iter_batches(args.per_device_train_batch_size,
                                                                             start, stop))  # fmt: skip
            source = f"module {first}'s cache"
            reads_cache = previous.first_module
        else:
            dataset = self.train_dataset
            if hasattr(dataset, "column_names"):
                dataset = remove_unused_columns(self, dataset, description="prefix cache")
            collator = collator_without_unused_columns(self, self.data_collator, description="prefix cache")
            loader_args = dict(batch_size=args.per_device_train_batch_size, collate_fn=collator,
                               num_workers=args.dataloader_num_workers)  # fmt: skip
            if is_iterable(dataset):  # one pass over the stream; the processes of a machine take turns by batch
                rows = None
                loader = itertools.islice(DataLoader(dataset, **loader_args), local_rank, None, local_world)
            else:
                rows = len(dataset)
                share = range(rows * local_rank // local_world, rows * (local_rank + 1) // local_world)
                part = dataset.select(share) if hasattr(dataset, "select") else Subset(dataset, share)
                loader = DataLoader(part, **loader_args)
            batches = (prepare_inputs(self, batch) for batch in loader)
            source, reads_cache = "the data", None
        root = self._prefix_cache_root()
        node = self.accelerator.process_index // max(local_world, 1)
        folder = root / f"node-{node:02d}" / f"lap-{phase.lap:02d}-module-{first + 1:02d}"
        token_columns = (*TOKEN_COLUMNS, "labels") if model.task.is_language_model else TOKEN_COLUMNS
        pad_id = getattr(model.backbone.config, "pad_token_id", None)
        model.train()  # frozen modules stay in eval mode (TRGLModel.train)
        previous_input, model.cached_input_module = model.cached_input_module, reads_cache
        try:
            outputs = compute_prefix_outputs(model, batches, first - 1, self.accelerator.autocast)
            cache = build_prefix_cache(
                outputs, rows, folder=folder, budget=parse_bytes(args.trgl_prefix_cache_max_memory),
                dtype=getattr(torch, args.trgl_prefix_cache_dtype) if args.trgl_prefix_cache_dtype else None,
                token_columns=token_columns, pad_values={"input_ids": pad_id if pad_id is not None else 0},
                first_module=first, lap=phase.lap, local_rank=local_rank, local_world=local_world,
                barrier=self.accelerator.wait_for_everyone,
                held=previous.nbytes if previous is not None and not previous.on_disk else 0,
                pad_to_multiple_of=getattr(self.data_collator, "pad_to_multiple_of", None),
            )  # fmt: skip
        finally:
            model.cached_input_module = previous_input
        logger.info("%s: the prefix cache was computed from %s.", phase.name, source)
        if previous is not None:
            self.accelerator.wait_for_everyone()  # every process has read the previous cache
            previous.remove()
        self._prefix_cache = cache
        return cache

    def _prefix_cache_root(self) -> Path:
        return Path(self.args.trgl_prefix_cache_dir or self._run_root / ".trgl-prefix-cache")

    def _drop_prefix_cache(self) -> None:
        """Remove the last cache and the run's cache folders (a given `trgl_prefix_cache_dir` itself is kept)."""
        if self._prefix_cache is None:
            return
        self.accelerator.wait_for_everyone()
        self._prefix_cache.remove()
        self._prefix_cache = None
        if self.accelerator.is_local_main_process:
            root = self._prefix_cache_root()
            for node in root.glob("node-*"):
                shutil.rmtree(node, ignore_errors=True)
            if not self.args.trgl_prefix_cache_dir and root.is_dir() and not any(root.iterdir()):
                root.rmdir()

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """Forward every module; backpropagate each trainable module's loss as soon as it exists."""
        model.train()
        net: TRGLModel = self.accelerator.unwrap_model(model)
        self._broadcast_buffers(net.trainable_modules)
        inputs = prepare_inputs(self, inputs)
        accumulation = self.current_gradient_accumulation_steps
        total = torch.zeros((), device=self.args.device)
        task_losses = {}
        averager = self._gradient_averager(net) if self.accelerator.sync_gradients else None
        if averager is not None:
            averager.start_step()
        with self.compute_loss_context_manager(), self.accelerator.autocast():
            for step in net.iter_modules(frozen_heads=False, **inputs):
                if not step.trainable:
                    continue
                self._watch_finite(step.index, step.loss.detach())
                self.accelerator.backward(step.loss / accumulation)
                total += step.loss.detach()
                task_losses[step.index] = step.task_loss.detach()
                sums = self._module_sums.setdefault(step.index, [0.0, 0.0, 0])
                sums[0] = sums[0] + step.task_loss.detach()  # no host sync per step: read at logging time
                sums[1] = sums[1] + step.transport.detach()
                sums[2] += 1
        if self.accelerator.sync_gradients:
            if self._fsdp is None:
                self._synchronise(net, task_losses, averager)
            else:  # FSDP reduce-scatters the gradients itself; the multipliers still need the averaged losses
                net.transport_schedule.after_step(self.state.global_step + 1, average_task_losses(task_losses))
            warmup = self.head_settings.warmup_steps
            if self.state.global_step == 0 and warmup >= self.state.max_steps > 0:
                logger.warning("trgl_head_warmup_steps=%d covers all %d steps of %s: its blocks do not train; lower "
                               "it.", warmup, self.state.max_steps, self._phase.name)  # fmt: skip
            if self.state.global_step < warmup:  # heads alone: the blocks do not move
                heads = {id(p) for p in net.heads.parameters()}
                for index in net.trainable_modules:
                    for param in net.module_parameters(index):
                        if id(param) not in heads:
                            param.grad = None
        return total / accumulation

    def _broadcast_buffers(self, modules: Any = None) -> None:
        """Give every process rank 0's buffers (BatchNorm statistics) of `modules` (all by default), as DDP's
        forward does with `broadcast_buffers=True`: before each training step, before a prefix cache is built and
        before anything is evaluated or saved, so the ranks never drift apart."""
        if not is_multiprocess():
            return
        net: TRGLModel = self.accelerator.unwrap_model(self.model)
        for buffer in net.module_buffers(modules):
            dist.broadcast(buffer.data, src=0)

    def _gradient_averager(self, net: TRGLModel) -> GradientAverager | None:
        """The phase's gradient averager (hooks on the trainable parameters), created at its first step; `None` in
        a single process."""
        if self._fsdp is not None or not is_multiprocess():
            return None
        if self._averager is None:
            cap = self.args.ddp_bucket_cap_mb
            self._averager = GradientAverager(
                [list(net.module_parameters(index)) for index in net.trainable_modules],
                bucket_bytes=int(cap * 1024**2) if cap else DEFAULT_BUCKET_BYTES,
            )
        return self._averager

    def _drop_gradient_averager(self) -> None:
        if self._averager is not None:
            self._averager.remove()
            self._averager = None

    def _synchronise(
        self, net: TRGLModel, task_losses: dict[int, torch.Tensor], averager: GradientAverager | None
    ) -> None:
        """Wait for the gradients' averages over processes (their all-reduces started during backward) and average
        the losses the multiplier updates read; update multipliers."""
        if averager is not None:
            averager.finish()
            if task_losses:
                losses = torch.stack([value.reshape(()).float() for value in task_losses.values()])
                dist.all_reduce(losses)
                losses /= dist.get_world_size()
                task_losses = dict(zip(task_losses, losses))
        net.transport_schedule.after_step(self.state.global_step + 1, task_losses)

    def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
        """Clip each trainable module's gradients separately to `max_grad_norm`; return the global norm."""
        net: TRGLModel = self.accelerator.unwrap_model(model)
        self.accelerator.unscale_gradients()
        norms = []
        for index in net.trainable_modules:
            params = [p for p in net.module_parameters(index) if p.grad is not None]
            if params:
                norms.append(local_norm(torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)))
        if not norms:
            return torch.zeros(())
        return torch.stack([n.float() for n in norms]).pow(2).sum().sqrt()

    def _watch_finite(self, index: int, loss: torch.Tensor) -> None:
        """Remember, on the device, the first step at which module `index`'s loss was NaN or infinite (-1: none):
        read by the host only when logs are written and when the phase ends ([`check_finite`])."""
        step = self.state.global_step + 1
        first = self._first_nonfinite.get(index)
        if first is None:
            first = self._first_nonfinite[index] = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss)
        self._first_nonfinite[index] = torch.where(bad & (first < 0), torch.full_like(first, step), first)
        self._nonfinite_values[index] = torch.where(bad & (first < 0), loss.float(),
                                                    self._nonfinite_values.get(index, loss.float()))  # fmt: skip

    def check_finite(self, phase_name: str | None = None) -> None:
        """Stop with a [`NonFiniteLossError`] naming the module and the step if a loss was NaN or infinite (checked
        when logs are written, before a checkpoint is saved and when a phase ends)."""
        if not self._first_nonfinite:
            return
        firsts = torch.stack([self._first_nonfinite[i] for i in sorted(self._first_nonfinite)]).tolist()
        for index, first in zip(sorted(self._first_nonfinite), firsts):
            if first >= 0:
                value = float(self._nonfinite_values[index])
                raise NonFiniteLossError(
                    f"The loss of module {index + 1} became {value} at step {first} of phase "
                    f"{phase_name or (self._phase.name if self._phase else '?')}; the stages written so far are kept. "
                    "Lower the learning rate, raise tau, or check the inputs."
                )

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Trainer's checkpoint, never of weights a NaN or infinite loss has reached."""
        self.check_finite()
        super()._save_checkpoint(model, trial)
        if self.args.should_save and self._phase is not None:
            local = f"checkpoint-{self.state.global_step}"
            step, point = self._step_offset + self.state.global_step, f"{PHASES_DIR}/{self._phase.name}/{local}"
            write_marker(self._run_root, step, self.fingerprint, point, source=Path(self.args.output_dir) / local)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add each trained module's task loss and transport cost (averaged since the last log) to training logs."""
        if "loss" in logs:
            self.check_finite()
        if "loss" in logs and self._module_sums:
            for index, (task, transport, count) in sorted(self._module_sums.items()):
                task, transport = float(task), float(transport)
                logs[f"module_{index + 1}_task_loss"] = round(task / count, 4)
                logs[f"module_{index + 1}_transport"] = round(transport / count, 6)
            self._module_sums = {}
        if self._phase is not None:
            logs["trgl_phase"] = self._phase.name
        super().log(logs, start_time)  # callbacks see the run's step and epoch (trgl_hf.training.run_callbacks)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"):
        """Every evaluated module's metrics (`{prefix}_module_{k}_{metric}`) and `{prefix}_best_module`, chosen by
        `metric_for_best_model` / `greater_is_better` (default: the task's main metric). The choice is remembered
        for [`TRGLTrainer.predict`] (selection on a validation set, never on the set being predicted)."""
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        chosen = f"{self.selection_prefix}best_module"  # a dict of sets: the set metric_for_best_model names
        if metric_key_prefix == "eval" and chosen in metrics:
            self.best_module = int(metrics[chosen])
        return metrics

    def predict(self, test_dataset: Any, ignore_keys: Any = None, metric_key_prefix: str = "test"):
        """Predictions of one module, shaped as `Trainer.predict` returns them: the best module of the last
        `evaluate()` (the last module if none ran). Every module's logits are in `.module_predictions`
        `(examples, modules, labels)`; `.module` is the 1-based module whose predictions are returned.

        Language models keep the per-module loss sums of evaluation as predictions (their logits are not gathered).
        """
        output = super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if self.model.task.is_language_model or output.predictions is None:
            return output
        module = self.best_module or output.predictions.shape[1]
        metrics = metrics_of_module(output.metrics, module, metric_key_prefix)
        result = TRGLPredictionOutput(output.predictions[:, module - 1], output.label_ids, metrics)
        result.module_predictions, result.module = output.predictions, module
        return result

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Return the last evaluated module's loss and every evaluated module's logits `(batch, modules, labels)`."""
        inputs = prepare_inputs(self, inputs)
        labels = inputs.get("labels")
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs)
        loss = outputs.loss.detach().mean() if outputs.loss is not None else None
        if prediction_loss_only:
            return loss, None, None
        if outputs.module_logits is None:  # language models: per-module token NLL sums and counts, not logits
            tokens = (labels[:, 1:] != -100).sum().float()
            losses = outputs.module_losses.detach().float()
            totals = torch.stack([losses * tokens, tokens.expand_as(losses)])[None]
            return loss, totals, torch.zeros(1, device=loss.device)
        return loss, outputs.module_logits.detach().float(), labels

    # ------------------------------------------------------------------ stages and state

    def _finish_phase(self, phase: Phase, run: RunState, root: Path, steps: int) -> None:
        """Evaluate, record the phase as completed (weights first, then the state), then write its stages."""
        model: TRGLModel = self.model
        self.check_finite(phase.name)  # before anything of the phase is evaluated or recorded
        self._broadcast_buffers()
        metrics = self._phase_end_evaluation() if self.eval_dataset is not None and phase.final_modules else {}
        for index in phase.final_modules:
            stage = index + 1
            prefix = f"{self.selection_prefix}module_{stage}_"
            self.stage_metrics[stage] = finite_metrics(
                {name[len(prefix) :]: value for name, value in metrics.items() if name.startswith(prefix)}, stage
            )
        model.config.trained_modules = phase.evaluated_modules
        run.stage_metrics = dict(self.stage_metrics)
        run.phase_steps[phase.name] = steps
        self._keep_lap_state(phase)
        run.lap_states = full_lap_states(self._lap_states, self._fsdp, writer=self.args.should_save)
        run.log_history = self.trgl_log_history + [
            {**shift_entry(entry, self._step_offset, self._epoch_offset), "trgl_phase": phase.name}
            for entry in self.state.log_history
        ]
        with gathered_for_saving(model, self._fsdp, writer=self.args.should_save):  # FSDP: full weights to write
            run.complete_phase(phase, model, by_module=self._fsdp is None)
            if self.args.should_save:
                write_marker(root, self._step_offset + steps, self.fingerprint, f"{phase.name} finished",
                             source=root / run.progress)  # fmt: skip
            self._write_pending_stages(run, final=phase == self._phases[-1])
        self.accelerator.wait_for_everyone()
        handler: RunCallbackHandler = self.callback_handler
        if handler.position is not None:
            handler.run_event("on_phase_end", self.args, handler.position.state(self.state), self.control,
                              phase=phase, metrics=metrics)  # fmt: skip

    def _phase_end_evaluation(self) -> dict[str, float]:
        """The metrics of the phase's trained modules: those of the evaluation the loop ran at the phase's last step
        when there was one (one process, and no best checkpoint loaded since: the weights are those it scored), else a
        new `evaluate()`."""
        ran = [
            e
            for e in self.state.log_history[-2:]
            if f"{self.selection_prefix}best_module" in e and e.get("step") == self.state.global_step
        ]
        best_loaded = self.args.load_best_model_at_end and self.state.best_model_checkpoint is not None
        if ran and not best_loaded and not is_multiprocess():
            metrics = {name: value for name, value in ran[-1].items() if name.startswith("eval_")}
            self.best_module = int(metrics[f"{self.selection_prefix}best_module"])
            return metrics
        return self.evaluate()

    def _write_pending_stages(self, run: RunState, final: bool) -> None:
        """Export the stages recorded as pending (from the weights now in the model) and record their checksums."""
        root, num_stages = Path(self.args.output_dir), self.model.num_modules
        for stage in list(run.pending):
            written = self.args.saves_stage(stage, num_stages)
            if self.args.should_save and written:
                self.save_stage(stage, root / stage_dirname(stage))
                if self._pusher is not None:
                    self._pusher.submit_stage(stage, root / stage_dirname(stage), final and stage == max(run.pending))
            if written:
                run.record_stage(stage)
            else:
                run.pending.remove(stage)
                run.save()

    def _repair_stages(self, run: RunState, phases: list[Phase]) -> None:
        """On resume: write the stages left pending by an interrupted transition, and export again any recorded stage
        whose files were damaged (its modules are final in the restored weights); never rewrite an intact stage."""
        if not self.args.saves_any_stage():
            return
        damaged = run.damaged_stages()
        for stage in damaged:
            logger.warning(
                "%s is damaged or missing: exporting it again from the run's weights.", stage_dirname(stage)
            )
            run.stages.pop(stage)
        run.pending = sorted({*run.pending, *damaged})
        if run.pending:
            model: TRGLModel = self.model
            done = {index for p in phases if p.name in run.completed for index in p.modules}
            model.config.trained_modules = max(done) + 1 if done else 0
            self._write_pending_stages(run, final=len(run.completed) == len(phases))

    def save_stage(self, stage: int, directory: str | os.PathLike) -> Path:
        """Export modules 1..`stage` with head `stage` and write them, with the processor given to the trainer and a
        model card, to `directory`."""
        model: TRGLModel = self.model
        exported = model.export_stage(stage, share_weights=True)  # written at once: the model's own tensors
        info = {**self.run_facts(), "metrics": self.stage_metrics.get(stage, {})}
        write_adapter = None
        if exports_stage_adapters(model):  # and as a PEFT adapter

            def write_adapter(staging: Path) -> dict[str, Any]:
                return {"peft_adapter": save_stage_adapter(model, stage, staging / ADAPTER_DIR)}

        return save_stage(exported, directory, stage, model.num_modules, info, processor=self.processing_class,
                          write_extra=write_adapter)  # fmt: skip

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the chosen stage to `output_dir` (default `args.output_dir`) as `Trainer.save_model` writes a model:
        modules 1..k with head k, where k is the best module of the last `evaluate()` (the last module when none ran),
        loadable with the task's `AutoModelFor*` class and `pipeline(model=output_dir)`, with the processor and
        `trgl_stage.json`. In the run's own folder the run's model card is kept; the run (state, stages, resume
        points) is untouched. The Trainer's own checkpoints (`_internal_call`) hold the whole TRGL model, which resume
        reads."""
        if _internal_call:
            super().save_model(output_dir, _internal_call=True)
            return
        target = Path(output_dir or self.args.output_dir)
        stage = self.best_module or self.model.num_modules
        with gathered_for_saving(self.model, self._fsdp, writer=self.args.should_save):
            if self.args.should_save:
                target.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=".trgl-save-model.", dir=target))
                try:
                    self.save_stage(stage, staging / "stage")
                    run_card = (target / STATE_FILE).exists() and (target / "README.md").exists()
                    for old in target.glob("*"):  # weights of an earlier save would load instead of these
                        if old.is_file() and WEIGHT_FILE.fullmatch(old.name):
                            old.unlink()
                    move_files_into(staging / "stage", target, skip={"README.md"} if run_card else set())
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:  # as Trainer.save_model does
            self.push_to_hub()

    def run_facts(self) -> dict[str, Any]:
        """What the stages' `trgl_stage.json` and the model cards record about the run."""
        model: TRGLModel = self.model
        return {
            "task": model.task.name,
            "base_model": model.config.base_model_name_or_path,
            "dataset": self.args.trgl_dataset_name or dataset_name(self.train_dataset),
            "trgl_mode": self.args.trgl_mode,
            "taus": model.transport_schedule.describe(),
            "use_transport": model.config.use_transport,
            "module_metrics": {str(stage): metrics for stage, metrics in sorted(self.stage_metrics.items())},
            "run_fingerprint": getattr(self, "fingerprint", None),
        }

    def create_model_card(self, *args: Any, **kwargs: Any) -> Path | None:
        """Write the run's card, `output_dir/README.md`: settings, every module's metrics with a plot
        (`module_metrics.svg`) and how to load each stage (main process only; Trainer's arguments are ignored)."""
        if not self.is_world_process_zero():
            return None
        model: TRGLModel = self.model
        root = Path(self.args.output_dir)
        facts = {**self.run_facts(), "num_stages": model.num_modules, "global_step": self.state.global_step}
        facts["training"] = {name: getattr(self.args, name) for name in (
            "trgl_mode", "num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
            "gradient_accumulation_steps", "weight_decay", "seed")}  # fmt: skip
        plot = module_plot_svg(self.stage_metrics, model.task.selection_metric,
                               f"{model.task.selection_metric} per module ({self.args.trgl_mode})")  # fmt: skip
        if plot is not None:
            (root / PLOT_FILE).write_text(plot, encoding="utf-8")
        stages = {}
        for stage, folder in find_stage_folders(root).items():
            remote = bool(json.loads((folder / "config.json").read_text()).get("auto_map"))
            stages[stage] = load_arguments(str(folder), None, None, remote)
        run_model_card(facts, stages, PLOT_FILE if plot is not None else None).save(root / "README.md")
        return root / "README.md"

    @property
    def hub_repo_id(self) -> str:
        """The repository stages are pushed to: `hub_model_id`, else the name of `output_dir`."""
        return self.args.hub_model_id or Path(self.args.output_dir).name

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Create the Hub repository stages will be pushed to (through `hub_api`)."""
        check_hub_credentials(self.args, self.hub_api)
        if not self.is_world_process_zero():
            return
        api = self.hub_api or HfApi(token=token or self.args.hub_token)
        try:
            api.create_repo(self.hub_repo_id, exist_ok=True, private=private or self.args.hub_private_repo)
        except Exception as error:
            raise HubPushError(None, self.hub_repo_id, "repository", self.args.output_dir, error) from error

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Intermediate Trainer checkpoints are not pushed: finished stages are."""

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs: Any):
        """Push every finished stage of the run in `output_dir` (see `trgl_hub_strategy`) now, and with the
        `"subfolder"` strategy the run's card to the root of `main`; returns {stage: target}.

        Raises:
            [`HubPushError`]: if a push fails (the local run is untouched; calling again is safe).
        """
        token = kwargs.get("token") or self.args.hub_token
        pushed = push_run_stages(
            self.args.output_dir, self.hub_repo_id, strategy=self.args.trgl_hub_strategy, api=self.hub_api,
            token=token, private=self.args.hub_private_repo,
        )  # fmt: skip
        if self.create_model_card() is not None and self.args.trgl_hub_strategy == "subfolder":
            push_run_card(self._run_card_files(), self.hub_repo_id, api=self.hub_api, token=token)
        return pushed

    def _run_card_files(self) -> list[Path]:
        """The run card and its plot (when one was drawn), as [`create_model_card`] wrote them."""
        root = Path(self.args.output_dir)
        return [path for path in (root / "README.md", root / PLOT_FILE) if path.is_file()]

    def module_table(self) -> str:
        """Markdown table of the evaluation metrics of every finished stage."""
        return module_table(self.stage_metrics)


WEIGHT_FILE = re.compile(r"(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?")
"""Weight files (and shard indexes) that `from_pretrained` reads from a folder."""


def move_files_into(source: Path, target: Path, skip: set[str]) -> None:
    """Move every entry of `source` into `target` (each replaced atomically; a folder replaces the folder of the same
    name), except the names in `skip`."""
    for entry in sorted(source.iterdir()):
        if entry.name in skip:
            continue
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir():
            shutil.rmtree(destination)
        os.replace(entry, destination)


def check_stage_selection(args: TRGLTrainingArguments, num_modules: int) -> None:
    """Refuse `trgl_save_stages` numbers the model has no stage for."""
    selection = args.trgl_save_stages
    if isinstance(selection, tuple) and selection[-1] > num_modules:
        raise ValueError(
            f"`trgl_save_stages={list(selection)}` but the model has {num_modules} modules: give stage numbers in "
            f"1..{num_modules}, or 'all' / 'last' / 'none'."
        )


def check_given_optimizers(optimizers: Any, model: TRGLModel, args: TRGLTrainingArguments, fsdp: bool = False) -> None:
    """`optimizers=(optimizer, scheduler)` drives one training loop; a run of several phases (sequential or multilap
    with K > 1, multilap laps) builds a fresh optimizer for each phase, so the pair is refused there.

    Raises:
        `ValueError`: naming `optimizer_cls_and_kwargs`, which builds the optimizer of each phase.
    """
    if not optimizers or all(item is None for item in optimizers):
        return
    if fsdp:
        raise ValueError(
            "`optimizers=(optimizer, scheduler)` holds the unsharded parameters, which FSDP replaces: pass "
            "`optimizer_cls_and_kwargs=(optimizer_class, kwargs)` instead (built over the sharded parameters)."
        )
    phases = len(plan_phases(model.num_modules, args.trgl_mode, args.trgl_laps, args.num_train_epochs, args.max_steps,
                             use_cache=False))  # fmt: skip
    if phases > 1:
        raise ValueError(
            f"`optimizers=(optimizer, scheduler)` gives one optimizer for one training loop, but this "
            f"{args.trgl_mode} run trains {phases} phases, each with a fresh optimizer over its own module: pass "
            "`optimizer_cls_and_kwargs=(optimizer_class, kwargs)` instead (and `lr_scheduler_type`), or use "
            "`trgl_mode='parallel'`."
        )


def metrics_of_module(metrics: dict[str, float], module: int, prefix: str) -> dict[str, float]:
    """`metrics` whose plain names (`{prefix}_loss`, `{prefix}_accuracy`, ...) hold module `module`'s values (1-based)
    instead of the last module's; the per-module names are kept."""
    chosen = f"{prefix}_module_{module}_"
    result = dict(metrics)
    for name, value in metrics.items():
        if name.startswith(chosen):
            result[f"{prefix}_{name[len(chosen) :]}"] = value
    return result


def selection_prefix(metric_for_best_model: str | None, eval_dataset: Any) -> str:
    """The key prefix of the evaluation that chooses the best module and gives the stages their metrics: `"eval_"`,
    or `"eval_{name}_"` for the set of a dict of evaluation sets named by `metric_for_best_model` (else the first)."""
    if not isinstance(eval_dataset, dict) or not eval_dataset:
        return "eval_"
    named = [name for name in eval_dataset if (metric_for_best_model or "").startswith(f"eval_{name}_")]
    return f"eval_{max(named, key=len) if named else next(iter(eval_dataset))}_"


def per_module_metrics(
    model: TRGLModel,
    args: TRGLTrainingArguments,
    compute_metrics: Callable | None,
    preprocess: Callable | None,
    prefix: str = "eval_",
) -> PerModuleMetrics | PerModuleLanguageModelMetrics:
    """The `compute_metrics` the Trainer runs: the user's (or the task's) applied to every module's head.

    Raises:
        `ValueError`: for what cannot apply to every head exactly (metrics of a causal LM's logits, which are never
            gathered; a plain function with `batch_eval_metrics` and several modules, whose running state would mix
            the modules).
    """
    if model.task.is_language_model:
        if compute_metrics is not None or preprocess is not None:
            raise ValueError(
                "TRGLTrainer scores causal language models itself (each module's loss and perplexity, per token; the "
                "vocabulary-sized logits of K heads are never gathered): drop `compute_metrics` and "
                "`preprocess_logits_for_metrics`."
            )
        return PerModuleLanguageModelMetrics()
    if args.batch_eval_metrics and isinstance(compute_metrics, types.FunctionType) and model.num_modules > 1:
        raise ValueError(
            "With `batch_eval_metrics=True`, `compute_metrics` keeps running statistics between batches, and each "
            f"of the {model.num_modules} modules needs its own: pass an object with `__call__(eval_pred, "
            "compute_result)` (copied once per module), not a function, or set `batch_eval_metrics=False`."
        )
    selection = args.metric_for_best_model
    selection = selection[len(prefix) :] if selection and selection.startswith(prefix) else selection
    return PerModuleMetrics(compute_metrics, selection, model.task, args.greater_is_better,
                            model.config.label_smoothing)  # fmt: skip


def adopt_label_smoothing(model: TRGLModel, args: TRGLTrainingArguments) -> None:
    """`label_smoothing_factor` (Trainer's argument) becomes the TRGL loss's label smoothing, the one every module's
    task loss applies, as `Trainer`'s label smoother would apply it to the model's loss.

    Raises:
        `ValueError`: when `TRGLConfig.label_smoothing` already says something else, or the task has no cross-entropy.
    """
    factor = args.label_smoothing_factor
    if not factor:
        return
    config = model.config
    if config.label_smoothing and config.label_smoothing != factor:
        raise ValueError(
            f"`label_smoothing_factor={factor}` but the model's TRGLConfig has `label_smoothing="
            f"{config.label_smoothing}`: set only one of them (they are the same setting)."
        )
    if model.task.name not in ("single_label_classification", "causal_lm"):
        raise ValueError(
            f"`label_smoothing_factor` applies to cross-entropy; the {model.task.name} task has none: set it to 0."
        )
    config.label_smoothing = factor


PACKAGED_BUILDERS = frozenset({"arrow", "audiofolder", "cache", "csv", "generator", "imagefolder", "json", "pandas",
                               "parquet", "sql", "text", "videofolder", "webdataset", "xml"})  # fmt: skip


def dataset_name(dataset: Any) -> str | None:
    """The name a dataset carries (`info.dataset_name`), unless it only names a file format or a generator."""
    info = getattr(dataset, "info", None)
    name = (getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)) if info else None
    return None if not name or name in PACKAGED_BUILDERS else name
