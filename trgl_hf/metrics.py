"""Per-module evaluation metrics, computed with numpy (no network-bound `evaluate.load`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from transformers import EvalPrediction

from .tasks import TASKS, Task

MetricFunction = Callable[[EvalPrediction], dict[str, float]]


def accuracy(eval_prediction: EvalPrediction) -> dict[str, float]:
    """Top-1 accuracy of `(num_examples, num_labels)` logits against integer labels.

    Args:
        eval_prediction (`EvalPrediction`): logits and labels.

    Returns:
        `dict[str, float]`: `{"accuracy": ...}`.
    """
    logits, labels = np.asarray(eval_prediction.predictions), np.asarray(eval_prediction.label_ids)
    return {"accuracy": float((logits.argmax(axis=-1) == labels).mean())}


class PerModuleMetrics:
    """Turn a single-head `compute_metrics` into one that scores every module's head.

    Predictions arrive as `(num_examples, num_modules, num_labels)`. Each metric `name` of module k is reported as
    `module_{k}_{name}` (1-based), with the head's loss (the task's own: cross-entropy, binary cross-entropy or MSE)
    as `module_{k}_loss`; the last module's metrics are also reported under their plain names, and `best_module` is
    the module with the best value of `selection_metric`.

    Args:
        compute_metrics (`Callable`, *optional*): metrics of one head; defaults to the task's (accuracy for
            single-label classification, micro F1 and exact match for multi-label, MSE for regression).
        selection_metric (`str`, *optional*): metric used to pick `best_module` (`metric_for_best_model` without
            `eval_`); defaults to the task's, or to the lowest loss when a custom `compute_metrics` does not report
            it. The result is reported as `best_module_{metric}` under the metric actually used.
        task ([`Task`], *optional*): the heads' task; defaults to single-label classification.
        greater_is_better (`bool`, *optional*): whether a larger `selection_metric` is better (default: the task's
            for its own metric, else False for losses / errors and True otherwise, as `TrainingArguments` decides).
    """

    def __init__(
        self,
        compute_metrics: MetricFunction | None = None,
        selection_metric: str | None = None,
        task: Task | None = None,
        greater_is_better: bool | None = None,
    ):
        self.task = task or TASKS["single_label_classification"]
        self.compute_metrics = compute_metrics or self.task.default_metrics
        self.selection_metric = selection_metric or self.task.selection_metric
        self.explicit_selection = selection_metric is not None
        if greater_is_better is None:
            greater_is_better = (
                self.task.greater_is_better
                if selection_metric is None
                else not (self.selection_metric.endswith("loss") or self.selection_metric in ("mse", "perplexity"))
            )
        self.greater_is_better = greater_is_better

    def __call__(self, eval_prediction: EvalPrediction) -> dict[str, float]:
        predictions = np.asarray(eval_prediction.predictions)
        labels = np.asarray(eval_prediction.label_ids)
        results: dict[str, float] = {}
        scores = []
        for index in range(predictions.shape[1]):
            logits = predictions[:, index]
            metrics = dict(self.compute_metrics(EvalPrediction(predictions=logits, label_ids=labels)))
            metrics["loss"] = self.task.numpy_loss(logits, labels)
            for name, value in metrics.items():
                results[f"module_{index + 1}_{name}"] = value
            selection, greater = self.selection_metric, self.greater_is_better
            if selection not in metrics and not self.explicit_selection:  # a custom compute_metrics: lowest loss
                selection, greater = "loss", False
            if selection not in metrics:
                raise ValueError(
                    f"The best module is chosen by {self.selection_metric!r} (`metric_for_best_model`), which the "
                    f"metrics do not report (they report {sorted(metrics)}): set `metric_for_best_model` to one of "
                    "them, or return it from `compute_metrics`."
                )
            value = metrics[selection]
            scores.append(value if greater else -value)
            last = metrics
        results.update({name: value for name, value in last.items() if name != "loss"})
        best = int(np.argmax(scores))
        results["best_module"] = best + 1
        results[f"best_module_{selection}"] = float(results[f"module_{best + 1}_{selection}"])
        return results


class PerModuleLanguageModelMetrics:
    """Loss and perplexity of every module's LM head, averaged per token.

    Predictions arrive as `(num_batches, 2, num_modules)`: each batch's summed next-token NLL per module and its
    number of target tokens. Reports `module_{k}_loss` and `module_{k}_perplexity` (1-based), `perplexity` of the
    last module, and `best_module`, the module with the lowest loss.
    """

    def __call__(self, eval_prediction: EvalPrediction) -> dict[str, float]:
        totals = np.asarray(eval_prediction.predictions, dtype=np.float64).reshape(-1, 2, np.shape(
            eval_prediction.predictions)[-1])  # fmt: skip
        means = totals[:, 0].sum(axis=0) / np.maximum(totals[:, 1].sum(axis=0), 1.0)
        results: dict[str, float] = {}
        for index, mean in enumerate(means):
            results[f"module_{index + 1}_loss"] = float(mean)
            results[f"module_{index + 1}_perplexity"] = float(np.exp(mean))
        results["perplexity"] = float(np.exp(means[-1]))
        best = int(np.argmin(means))
        results["best_module"] = best + 1
        results["best_module_perplexity"] = float(np.exp(means[best]))
        return results
