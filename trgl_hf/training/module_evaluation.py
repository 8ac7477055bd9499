"""Evaluation of every module at once, as `Trainer` evaluates one model: each evaluated module's metrics, the best
module chosen on the validation set, and predictions of one module shaped as `Trainer.predict` returns them."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.trainer_utils import PredictionOutput

from .hf_internals import prepare_inputs
from .selection import metrics_of_module


class TRGLPredictionOutput(PredictionOutput):
    """`Trainer.predict`'s output (predictions, label_ids, metrics) for one module, with `module_predictions` (every
    module's logits) and `module` (which module `predictions` come from)."""


class ModuleEvaluationMixin:
    """`evaluate`, `predict` and `prediction_step` of [`TRGLTrainer`] (a `transformers.Trainer`)."""

    best_module: int | None
    selection_prefix: str

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
        predictions = output.predictions.take(module - 1, axis=self.model.task.module_axis)
        result = TRGLPredictionOutput(predictions, output.label_ids, metrics)
        result.module_predictions, result.module = output.predictions, module
        return result

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Return the last evaluated module's loss and every evaluated module's logits `(batch, modules, labels)`
        (`(batch, length, modules, labels)` for token classification: batches are padded along the length)."""
        inputs = prepare_inputs(self, inputs)
        labels = inputs.get("labels")
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs)
        loss = outputs.loss.detach().mean() if outputs.loss is not None else None
        if prediction_loss_only:
            return loss, None, None
        if outputs.module_logits is None:  # language models: per-module token NLL sums and counts, not logits
            tokens = self.model.task.count_targets(labels).float()
            losses = outputs.module_losses.detach().float()  # a batch with no scored token (masked LM): nan, adds 0
            sums = torch.where(tokens > 0, losses * tokens, torch.zeros_like(losses))
            totals = torch.stack([sums, tokens.expand_as(losses)])[None]
            return loss, totals, torch.zeros(1, device=loss.device)
        logits = outputs.module_logits.detach().float()
        return loss, logits.transpose(1, 2) if self.model.task.module_axis == 2 else logits, labels
