"""Per-module evaluation metrics, computed with numpy (no network-bound `evaluate.load`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from transformers import EvalPrediction

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


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of logits against integer labels, computed stably in float64."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


class PerModuleMetrics:
    """Turn a single-head `compute_metrics` into one that scores every module's head.

    Predictions arrive as `(num_examples, num_modules, num_labels)`. Each metric `name` of module k is reported as
    `module_{k}_{name}` (1-based), with the head's cross-entropy as `module_{k}_loss`; the last module's metrics are
    also reported under their plain names, and `best_module` is the module with the highest value of
    `selection_metric`.

    Args:
        compute_metrics (`Callable`, *optional*): metrics of one head; defaults to [`accuracy`].
        selection_metric (`str`, *optional*, defaults to `"accuracy"`): metric used to pick `best_module`.
    """

    def __init__(self, compute_metrics: MetricFunction | None = None, selection_metric: str = "accuracy"):
        self.compute_metrics = compute_metrics or accuracy
        self.selection_metric = selection_metric

    def __call__(self, eval_prediction: EvalPrediction) -> dict[str, float]:
        predictions = np.asarray(eval_prediction.predictions)
        labels = np.asarray(eval_prediction.label_ids)
        results: dict[str, float] = {}
        scores = []
        for index in range(predictions.shape[1]):
            logits = predictions[:, index]
            metrics = dict(self.compute_metrics(EvalPrediction(predictions=logits, label_ids=labels)))
            metrics["loss"] = cross_entropy(logits, labels)
            for name, value in metrics.items():
                results[f"module_{index + 1}_{name}"] = value
            scores.append(metrics.get(self.selection_metric, -metrics["loss"]))
            last = metrics
        results.update({name: value for name, value in last.items() if name != "loss"})
        best = int(np.argmax(scores))
        results["best_module"] = best + 1
        results[f"best_module_{self.selection_metric}"] = float(scores[best])
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
