"""`TRGLTrainer`: trains the modules of a `TRGLModel` greedily, in parallel, sequential or multi-lap mode."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from huggingface_hub import HfApi
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from transformers import DataCollatorWithPadding, DefaultDataCollator, Trainer, default_data_collator
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import TrainOutput

from .checkpointing import atomic_directory, save_stage, stage_dirname, write_json
from .data import check_labels
from .guards import (
    check_hub_credentials,
    check_output_dir,
    check_sequence_lengths,
    check_weight_folder,
    latest_complete_checkpoint,
    run_fingerprint,
)
from .hub import HubPushError, push_final, push_run_stages, push_stage
from .metrics import PerModuleLanguageModelMetrics, PerModuleMetrics
from .modeling_trgl import TRGLModel
from .training_args import TRGLTrainingArguments

logger = logging.getLogger(__name__)

STATE_FILE = "trgl_state.json"
PROGRESS_DIR = "trgl-progress"
PHASES_DIR = "phases"


class NonFiniteLossError(ValueError):
    """A module's loss became NaN or infinite during training."""


@dataclass(frozen=True)
class Phase:
    """One call of the underlying training loop: which modules train, for how long, and which become final."""

    name: str
    modules: tuple[int, ...]
    num_train_epochs: float
    max_steps: int
    final_modules: tuple[int, ...]


class PrefixCacheDataset(Dataset):
    """Outputs of the frozen prefix, computed once, with their labels and the inputs that blocks need as context
    (attention masks, ...) — sequential and multi-lap modes. Token rows are stored without their padding."""

    def __init__(self, rows: list[dict[str, torch.Tensor]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.rows[index]


TOKEN_COLUMNS = ("trgl_hidden_states", "input_ids", "attention_mask", "token_type_ids", "position_ids")


def collate_cached_rows(
    rows: list[dict[str, torch.Tensor]], pad_values: dict[str, int] | None = None
) -> dict[str, torch.Tensor]:
    """Stack cached rows, right-padding token rows to the longest row of the batch.

    Args:
        rows (`list[dict]`): cached rows (see `split_into_rows`).
        pad_values (`dict[str, int]`, *optional*): padding value per column, e.g. `{"input_ids": pad_token_id,
            "labels": -100}` (a decoder classifier finds the last token by the pad id); 0 for the others.
    """
    pad_values = {"labels": -100, **(pad_values or {})}
    batch = {}
    for name in rows[0]:
        tensors = [row[name] for row in rows]
        if tensors[0].dim() >= 1 and len({t.shape[0] for t in tensors}) > 1:
            length = max(t.shape[0] for t in tensors)
            pad = pad_values.get(name, 0)
            tensors = [
                torch.nn.functional.pad(t, (0, 0) * (t.dim() - 1) + (0, length - t.shape[0]), value=pad)
                for t in tensors
            ]
        batch[name] = torch.stack(tensors)
    return batch


def split_into_rows(
    columns: dict[str, torch.Tensor], token_columns: tuple[str, ...] = (*TOKEN_COLUMNS, "labels")
) -> list[dict[str, torch.Tensor]]:
    """Cut a batch into per-example rows, dropping the right padding of the `token_columns` (per the attention
    mask); other columns (a classifier's labels, multi-hot rows) are kept whole."""
    mask = columns.get("attention_mask")
    rows = []
    for index in range(len(columns["labels"])):
        length = None
        if mask is not None and mask.dim() == 2:
            positions = mask[index].nonzero()
            length = int(positions.max()) + 1 if len(positions) else mask.shape[1]
        row = {}
        for name, column in columns.items():
            value = column[index]
            if length is not None and name in token_columns and value.dim() >= 1 and value.shape[0] == mask.shape[1]:
                value = value[:length]
            row[name] = value.clone()
        rows.append(row)
    return rows


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
        compute_metrics = kwargs.pop("compute_metrics", None)
        if model.task.is_language_model:
            metrics = PerModuleLanguageModelMetrics()
        else:
            metrics = PerModuleMetrics(compute_metrics, task=model.task)
        super().__init__(model=model, args=args, compute_metrics=metrics, **kwargs)
        self.loss_is_scaled_for_ga = False
        self.trgl_log_history: list[dict[str, Any]] = []
        self.stage_metrics: dict[int, dict[str, float]] = {}
        self._module_sums: dict[int, list] = {}  # module -> [task loss sum, transport sum, count], kept on device
        self._phase: Phase | None = None
        self._cache_collator = None
        if self.pop_callback(ProgressCallback) is not None:
            self.add_callback(PhaseProgressCallback(self.describe_phase))

    # ------------------------------------------------------------------ planning

    def describe_phase(self) -> str:
        """A short label of the phase being trained, for progress bars."""
        if self._phase is None:
            return ""
        phases = self.plan_phases()
        position = [p.name for p in phases].index(self._phase.name) + 1
        modules = ",".join(str(index + 1) for index in self._phase.modules)
        label = "modules" if len(self._phase.modules) > 1 else "module"
        return f"{label} {modules}/{self.model.num_modules} (phase {position}/{len(phases)})"

    def plan_phases(self) -> list[Phase]:
        """The phases of `args.trgl_mode`, in order."""
        num_modules = self.model.num_modules
        epochs, max_steps = self.args.num_train_epochs, self.args.max_steps
        if self.args.trgl_mode == "parallel":
            modules = tuple(range(num_modules))
            return [Phase("parallel", modules, epochs, max_steps, modules)]
        laps = self.args.trgl_laps if self.args.trgl_mode == "multilap" else 1
        phases = []
        for lap in range(1, laps + 1):
            for index in range(num_modules):
                name = f"module-{index + 1:02d}" if laps == 1 else f"lap-{lap}-module-{index + 1:02d}"
                phases.append(
                    Phase(
                        name,
                        (index,),
                        epochs / laps,
                        max(1, max_steps // laps) if max_steps > 0 else -1,
                        (index,) if lap == laps else (),
                    )
                )
        return phases

    def prefix_cache_decision(self) -> tuple[bool, str]:
        """Whether sequential phases train on cached prefix outputs, and why."""
        choice = self.args.trgl_prefix_cache
        if choice != "auto":
            return choice == "always", f"trgl_prefix_cache={choice!r}"
        dataset, collator = self.train_dataset, self.data_collator
        has_transform = getattr(dataset, "_format_type", None) == "custom"
        known_dataset = hasattr(dataset, "column_names") or isinstance(dataset, TensorDataset)
        known_collator = collator is default_data_collator or isinstance(
            collator, (DefaultDataCollator, DataCollatorWithPadding)
        )
        if known_dataset and not has_transform and known_collator:
            return True, "the input pipeline is deterministic (no dataset transform, standard collator)"
        return False, "the input pipeline may be random (dataset transform or custom collator)"

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
        for name, dataset in {
            "train_dataset": self.train_dataset,
            **{f"eval_dataset[{key!r}]" if key else "eval_dataset": value for key, value in eval_sets.items()},
        }.items():
            check_labels(dataset, num_labels, name, model.task)
            check_sequence_lengths(dataset, model, name)
        check_hub_credentials(self.args, self.hub_api)
        phases = self.plan_phases()
        root = Path(self.args.output_dir)
        self.fingerprint = run_fingerprint(model.config, self.args, [p.name for p in phases])
        check_output_dir(root, self.fingerprint, bool(resume_from_checkpoint))
        state = self._load_state(root, phases) if resume_from_checkpoint else {"completed_phases": []}
        explicit_checkpoint = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        original = (self.args.output_dir, self.args.num_train_epochs, self.args.max_steps)
        original_dataset = self.train_dataset
        use_cache, cache_reason = self.prefix_cache_decision()
        total_steps, total_loss, runtime, output = 0, 0.0, 0.0, None
        started = time.time()
        try:
            for phase in phases:
                if phase.name in state["completed_phases"]:
                    continue
                self._phase = phase
                model.set_trainable_modules(phase.modules)
                model.evaluated_modules = max(max(phase.modules) + 1, self._modules_trained_so_far(state, phases))
                self.train_dataset, self._cache_collator = original_dataset, None
                model.cached_input_module = None
                first = min(phase.modules)
                if self.args.trgl_mode != "parallel" and first > 0:
                    if use_cache:
                        logger.info("%s: caching the frozen prefix's outputs once (%s).", phase.name, cache_reason)
                        self.train_dataset = self._build_prefix_cache(first)
                        pad_id = getattr(model.backbone.config, "pad_token_id", None)
                        self._cache_collator = functools.partial(
                            collate_cached_rows, pad_values={"input_ids": pad_id if pad_id is not None else 0}
                        )
                        model.cached_input_module = first
                    else:
                        logger.info("%s: recomputing the frozen prefix every step (%s).", phase.name, cache_reason)
                self._reset_for_phase()
                self.args.output_dir = str(root / PHASES_DIR / phase.name)
                self.args.num_train_epochs, self.args.max_steps = phase.num_train_epochs, phase.max_steps
                checkpoint = self._phase_checkpoint(phase, explicit_checkpoint) if resume_from_checkpoint else None
                output = super().train(
                    resume_from_checkpoint=checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
                )
                total_steps += output.global_step
                total_loss += output.training_loss * output.global_step
                runtime += output.metrics.get("train_runtime", 0.0)
                self.trgl_log_history.extend({**entry, "trgl_phase": phase.name} for entry in self.state.log_history)
                self.args.output_dir = str(root)
                self._finish_phase(phase, state, root)
        finally:
            self.args.output_dir, self.args.num_train_epochs, self.args.max_steps = original
            self.train_dataset, self._cache_collator = original_dataset, None
            model.cached_input_module = None
            model.evaluated_modules = None
            self._phase = None
        model.set_trainable_modules(range(model.num_modules))
        model.config.trained_modules = model.num_modules
        metrics = {"train_runtime": runtime, "train_wall_time": time.time() - started}
        if output is not None:
            metrics.update({k: v for k, v in output.metrics.items() if k not in metrics})
        self.state.log_history = list(self.trgl_log_history)
        return TrainOutput(total_steps, total_loss / max(total_steps, 1), metrics)

    def _modules_trained_so_far(self, state: dict[str, Any], phases: list[Phase]) -> int:
        done = [index for phase in phases if phase.name in state["completed_phases"] for index in phase.modules]
        return max(done) + 1 if done else 0

    def _reset_for_phase(self) -> None:
        """Fresh optimizer, scheduler and distributed wrapper for the next phase."""
        self.optimizer, self.lr_scheduler = None, None
        self.model_wrapped = self.model
        self.accelerator._optimizers.clear()
        self.accelerator._schedulers.clear()
        self.accelerator._models.clear()
        self._module_sums = {}

    def get_train_dataloader(self) -> DataLoader:
        """The training batches; cached prefix outputs are collated by stacking (they are already padded)."""
        if self._cache_collator is None:
            return super().get_train_dataloader()
        collator, self.data_collator = self.data_collator, self._cache_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = collator

    def _build_prefix_cache(self, first_module: int) -> PrefixCacheDataset:
        model: TRGLModel = self.model
        dataset = self.train_dataset
        if hasattr(dataset, "column_names"):
            dataset = self._remove_unused_columns(dataset, description="prefix cache")
        collator = self._get_collator_with_removed_columns(self.data_collator, description="prefix cache")
        loader = DataLoader(
            dataset,
            batch_size=self.args.per_device_eval_batch_size,
            collate_fn=collator,
            num_workers=self.args.dataloader_num_workers,
        )
        model.to(self.args.device)
        model.train()
        rows: list[dict[str, torch.Tensor]] = []
        with torch.no_grad(), self.accelerator.autocast():
            for batch in loader:
                batch = self._prepare_inputs(batch)
                labels = batch.pop("labels")
                for step in model.iter_modules(last_module=first_module - 1, frozen_heads=False, **batch):
                    hidden = step.hidden_state
                context = {k: v for k, v in batch.items() if k in model.adapter.context_input_names}
                columns = {"trgl_hidden_states": hidden, "labels": labels, **context}
                token_columns = (*TOKEN_COLUMNS, "labels") if model.task.is_language_model else TOKEN_COLUMNS
                rows += split_into_rows({name: value.cpu() for name, value in columns.items()}, token_columns)
        return PrefixCacheDataset(rows)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """Forward every module; backpropagate each trainable module's loss as soon as it exists."""
        model.train()
        net: TRGLModel = self.accelerator.unwrap_model(model)
        inputs = self._prepare_inputs(inputs)
        accumulation = self.current_gradient_accumulation_steps
        total = torch.zeros((), device=self.args.device)
        task_losses = {}
        with self.compute_loss_context_manager(), self.accelerator.autocast():
            for step in net.iter_modules(frozen_heads=False, **inputs):
                if not step.trainable:
                    continue
                if not torch.isfinite(step.loss):
                    raise NonFiniteLossError(
                        f"The loss of module {step.index + 1} became {step.loss.item()} at step "
                        f"{self.state.global_step + 1} of phase {self._phase.name if self._phase else '?'}; the "
                        "stages written so far are kept. Lower the learning rate, raise tau, or check the inputs."
                    )
                self.accelerator.backward(step.loss / accumulation)
                total += step.loss.detach()
                task_losses[step.index] = step.task_loss.detach()
                sums = self._module_sums.setdefault(step.index, [0.0, 0.0, 0])
                sums[0] = sums[0] + step.task_loss.detach()  # no host sync per step: read at logging time
                sums[1] = sums[1] + step.transport.detach()
                sums[2] += 1
        if self.accelerator.sync_gradients:
            self._synchronise(net, task_losses)
        return total / accumulation

    def _synchronise(self, net: TRGLModel, task_losses: dict[int, torch.Tensor]) -> None:
        """Average gradients (and the multiplier updates' losses) over processes; update multipliers."""
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        update_multipliers = (
            net.config.use_transport
            and net.config.tau_schedule == "multipliers"
            and (self.state.global_step + 1) % net.config.multiplier_period == 0
        )
        if distributed:
            params = [p for p in net.parameters() if p.requires_grad]
            for param in params:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
            flat = torch.cat(
                [p.grad.reshape(-1) for p in params] + [v.reshape(1).float() for v in task_losses.values()]
            )
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            offset = 0
            for param in params:
                param.grad.copy_(flat[offset : offset + param.numel()].view_as(param.grad))
                offset += param.numel()
            task_losses = {k: flat[offset + i] for i, k in enumerate(task_losses)}
        if update_multipliers:
            net.update_multipliers({k: float(v) for k, v in task_losses.items()})

    def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
        """Clip each trainable module's gradients separately to `max_grad_norm`; return the global norm."""
        net: TRGLModel = self.accelerator.unwrap_model(model)
        self.accelerator.unscale_gradients()
        norms = []
        for index in net.trainable_modules:
            params = [p for p in net.module_parameters(index) if p.grad is not None]
            if params:
                norms.append(torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm))
        if not norms:
            return torch.zeros(())
        return torch.stack([n.float() for n in norms]).pow(2).sum().sqrt()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add each trained module's task loss and transport cost (averaged since the last log) to training logs."""
        if "loss" in logs and self._module_sums:
            for index, (task, transport, count) in sorted(self._module_sums.items()):
                task, transport = float(task), float(transport)
                logs[f"module_{index + 1}_task_loss"] = round(task / count, 4)
                logs[f"module_{index + 1}_transport"] = round(transport / count, 6)
            self._module_sums = {}
        if self._phase is not None:
            logs["trgl_phase"] = self._phase.name
        super().log(logs, start_time)

    # ------------------------------------------------------------------ evaluation

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Return the last evaluated module's loss and every evaluated module's logits `(batch, modules, labels)`."""
        inputs = self._prepare_inputs(inputs)
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

    def _finish_phase(self, phase: Phase, state: dict[str, Any], root: Path) -> None:
        model: TRGLModel = self.model
        metrics = self.evaluate() if self.eval_dataset is not None and phase.final_modules else {}
        for index in phase.final_modules:
            stage = index + 1
            self.stage_metrics[stage] = {
                name[len(f"eval_module_{stage}_") :]: value
                for name, value in metrics.items()
                if name.startswith(f"eval_module_{stage}_")
            }
        model.config.trained_modules = self._modules_trained_so_far(
            {"completed_phases": [*state["completed_phases"], phase.name]}, self.plan_phases()
        )
        state["completed_phases"].append(phase.name)
        state["stage_metrics"] = {str(k): v for k, v in self.stage_metrics.items()}
        if self.args.should_save:
            phases = self.plan_phases()
            if self.args.trgl_save_stages:
                for index in phase.final_modules:
                    self.save_stage(index + 1, root / stage_dirname(index + 1))
                    if self.args.push_to_hub:
                        self._push_stage(index + 1, root / stage_dirname(index + 1), final=phase == phases[-1])
            if phase != phases[-1]:
                with atomic_directory(root / PROGRESS_DIR) as staging:
                    model.save_pretrained(staging)
            else:
                shutil.rmtree(root / PROGRESS_DIR, ignore_errors=True)
            write_json(
                root / STATE_FILE, {**state, "phases": [p.name for p in phases], "fingerprint": self.fingerprint}
            )
            shutil.rmtree(root / PHASES_DIR / phase.name, ignore_errors=True)
            if root.joinpath(PHASES_DIR).exists() and not any(root.joinpath(PHASES_DIR).iterdir()):
                root.joinpath(PHASES_DIR).rmdir()
        self.accelerator.wait_for_everyone()

    def save_stage(self, stage: int, directory: str | os.PathLike) -> Path:
        """Export modules 1..`stage` with head `stage` and write them (with a model card) to `directory`."""
        model: TRGLModel = self.model
        exported = model.export_stage(stage)
        info = {
            "base_model": model.config.base_model_name_or_path,
            "dataset": _dataset_name(self.train_dataset),
            "trgl_mode": self.args.trgl_mode,
            "taus": model.config.module_taus() if model.config.tau_schedule != "multipliers" else "multipliers",
            "use_transport": model.config.use_transport,
            "metrics": self.stage_metrics.get(stage, {}),
            "module_table": self.module_table(),
            "run_fingerprint": getattr(self, "fingerprint", None),
        }
        info["taus"] = (
            [None if math.isinf(t) else t for t in info["taus"]] if isinstance(info["taus"], list) else (info["taus"])
        )
        return save_stage(exported, directory, stage, model.num_modules, info)

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

    def _push_stage(self, stage: int, directory: Path, final: bool) -> None:
        model: TRGLModel = self.model
        kwargs = dict(api=self.hub_api, token=self.args.hub_token, private=self.args.hub_private_repo)
        push_stage(directory, self.hub_repo_id, stage, strategy=self.args.trgl_hub_strategy, **kwargs)
        if final and self.args.trgl_hub_strategy == "branch":
            push_final(Path(self.args.output_dir) / stage_dirname(model.num_modules), self.hub_repo_id, **kwargs)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs: Any):
        """Push every finished stage of the run in `output_dir` (see `trgl_hub_strategy`); returns {stage: target}."""
        return push_run_stages(
            self.args.output_dir, self.hub_repo_id, strategy=self.args.trgl_hub_strategy, api=self.hub_api,
            token=kwargs.get("token") or self.args.hub_token, private=self.args.hub_private_repo,
        )  # fmt: skip

    def module_table(self) -> str:
        """Markdown table of the evaluation metrics of every finished stage."""
        if not any(self.stage_metrics.values()):
            return ""
        names = sorted({name for metrics in self.stage_metrics.values() for name in metrics})
        lines = ["| module | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
        for stage, metrics in sorted(self.stage_metrics.items()):
            values = [f"{metrics[n]:.4f}" if n in metrics else "" for n in names]
            lines.append(f"| {stage} | " + " | ".join(values) + " |")
        return "\n".join(lines)

    def _load_state(self, root: Path, phases: list[Phase]) -> dict[str, Any]:
        state_path = root / STATE_FILE
        if not state_path.exists():
            return {"completed_phases": []}
        state = json.loads(state_path.read_text())
        expected = [p.name for p in phases]
        if state.get("phases") != expected:
            raise ValueError(
                f"{state_path} belongs to a run with phases {state.get('phases')}, not {expected}: resume with the "
                "same `trgl_mode`, `trgl_laps` and number of modules, or use a new `output_dir`."
            )
        if state["completed_phases"] and (root / PROGRESS_DIR).exists():
            check_weight_folder(root / PROGRESS_DIR)
            restored = TRGLModel.from_pretrained(root / PROGRESS_DIR)
            self.model.load_state_dict(restored.state_dict())
        self.stage_metrics = {int(k): v for k, v in state.get("stage_metrics", {}).items()}
        return state

    def _phase_checkpoint(self, phase: Phase, explicit: str | None) -> str | None:
        if explicit is not None:
            return explicit if Path(explicit).parent.name == phase.name else None
        checkpoint = latest_complete_checkpoint(Path(self.args.output_dir))
        return str(checkpoint) if checkpoint is not None else None


def _dataset_name(dataset: Any) -> str | None:
    info = getattr(dataset, "info", None)
    return getattr(info, "dataset_name", None) or getattr(info, "builder_name", None) if info else None
