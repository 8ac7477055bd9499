"""Which module is best, and under which names: the metrics every module's head reports, the evaluation set that
chooses (`metric_for_best_model`), and the choice recorded as the run's best checkpoint."""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from transformers import EvalPrediction, Trainer

from ..export.stage_folders import stage_folder
from .hf_internals import collator_without_unused_columns, remove_unused_columns
from .input_checks import first_rows, is_iterable
from .metrics import PerModuleLanguageModelMetrics, PerModuleMetrics
from .training_args import TRGLTrainingArguments


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
    model: Any,
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


def check_selection_metric(trainer: Trainer) -> None:
    """Before training: score one evaluation batch with the run's metrics, so that a `metric_for_best_model` they
    do not report is refused now rather than after the first module has trained (the model is unchanged; the
    random number generators are restored).

    Raises:
        `ValueError`: naming the metrics that are reported.
    """
    selection, prefix = trainer.args.metric_for_best_model, trainer.selection_prefix
    eval_set = trainer.eval_dataset
    if isinstance(eval_set, dict):
        eval_set = eval_set[prefix[len("eval_") : -1]]
    if selection is None or eval_set is None or trainer.strategy.fsdp is not None:
        return
    if isinstance(trainer.eval_dataset, dict) and not selection.startswith(prefix):
        raise ValueError(
            f"`metric_for_best_model={selection!r}` but `eval_dataset` is a dict of sets, whose metrics are named "
            f"`eval_<set>_<metric>`: name the set that chooses, e.g. '{prefix}{selection.split('eval_')[-1]}'."
        )
    name = selection[len(prefix) :] if selection.startswith(prefix) else selection
    rows = trainer.args.per_device_eval_batch_size
    sample = first_rows(eval_set, rows) if is_iterable(eval_set) else (
        eval_set.select(range(min(rows, len(eval_set)))) if hasattr(eval_set, "select") else
        Subset(eval_set, range(min(rows, len(eval_set)))))  # fmt: skip
    model, was_training = trainer.model, trainer.model.training
    if hasattr(sample, "column_names"):
        sample = remove_unused_columns(trainer, sample, description="metric check")
    collate = collator_without_unused_columns(trainer, trainer.data_collator, description="metric check")
    with torch.random.fork_rng(devices=[]):  # not get_eval_dataloader: it would cache this one-batch loader
        batch = next(iter(DataLoader(sample, batch_size=rows, collate_fn=collate)))
        model.eval()
        try:
            loss, logits, labels = trainer.prediction_step(model, batch, prediction_loss_only=False)
        finally:
            model.train(was_training)
    include = trainer.args.include_for_metrics
    extra = {"inputs": batch.get(trainer.model.main_input_name) if "inputs" in include else None,
             "losses": loss.reshape(1) if "loss" in include and loss is not None else None}  # fmt: skip
    if trainer.args.batch_eval_metrics:  # tensors, as Trainer passes them batch by batch
        reported = trainer.compute_metrics(EvalPrediction(logits, labels, **extra), compute_result=True)
    else:  # raises for a selection metric the module heads' metrics do not report
        extra = {key: value.cpu().numpy() if torch.is_tensor(value) else value for key, value in extra.items()}
        reported = trainer.compute_metrics(EvalPrediction(logits.cpu().numpy(), labels.cpu().numpy(), **extra))
    if name != "loss" and name not in reported:
        raise ValueError(
            f"`metric_for_best_model={selection!r}` is not among the evaluation metrics "
            f"({sorted({'loss', *(k for k in reported if not k.startswith('module_'))})}): set it to one of them, "
            "or return it from `compute_metrics`."
        )


def last_selection_evaluation(history: list[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    """The run's last evaluation of the set that chooses the best module (see `selection_prefix`)."""
    best_key = f"{prefix}best_module"
    return next((entry for entry in reversed(history) if best_key in entry), None)


def record_best_stage(state: Any, root: Path, history: list[dict[str, Any]], prefix: str, metric: str | None) -> None:
    """`state.best_model_checkpoint` and `best_metric`: the stage folder of the best module (by
    `metric_for_best_model`, as `evaluate()` chose it), as `Trainer` names its best checkpoint; None when no module was
    evaluated or no stage was written. (Phase checkpoints are removed once their phase is recorded.)"""
    state.best_model_checkpoint = state.best_metric = state.best_global_step = None
    evaluation = last_selection_evaluation(history, prefix)
    if evaluation is None or metric is None:
        return
    best_key = f"{prefix}best_module"
    folder = stage_folder(root, int(evaluation[best_key]))
    if folder.is_dir():
        state.best_model_checkpoint = str(folder)
        state.best_metric = next((v for k, v in evaluation.items() if k.startswith(f"{best_key}_")), None)
